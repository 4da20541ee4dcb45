"""PersonTable: the gallery's id <-> key table, against a dict doing the same."""
import random

from palmnode.biometrics.person_table import PersonTable


def test_it_agrees_with_a_dict_through_adds_removals_reused_keys_and_rewrites():
    rng = random.Random(3)
    table, model, free = PersonTable(), {}, []
    for step in range(20_000):
        if model and rng.random() < 0.45:
            person_id = rng.choice(sorted(model))
            key = table.drop(person_id)
            assert key == model.pop(person_id)
            free.append(key)
            assert person_id.encode() not in table._arena   # nothing of them stays in memory
        else:
            person_id = rng.choice([f"[p{step}]", f"[pérsonne-{step}-{'x' * rng.randrange(60)}]", f"[{step}]"])
            key = free.pop() if free and rng.random() < 0.5 else table.keys
            table.set(key, person_id)
            model[person_id] = key
        if step % 997 == 0:
            assert table.ids() == model and table.live == len(model)
    assert all(table.key_of(p) == k and table.id_of(k) == p and p in table for p, k in model.items())
    assert table.drop("never held") is None and table.key_of("never held") is None and "never held" not in table
    assert all(table.id_of(k) == "" for k in free)
    assert len(table._arena) <= 2 * sum(len(p.encode()) for p in model) + 64


def test_a_person_costs_about_60_bytes():
    table = PersonTable()
    for key in range(200_000):
        table.set(key, f"{key:032x}")        # a uuid4().hex-long id, as the gate makes them
    assert table.nbytes() / 200_000 < 80
