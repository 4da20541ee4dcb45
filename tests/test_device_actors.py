"""Device actors (palmnode/devices/*.py) against their emulators over real ptys."""
import pytest
import trio

from drivers.errors import DeviceTimeout
from drivers.illuminator.emulator import IlluminatorEmulator
from drivers.proximity.emulator import ProximityEmulator
from palmnode.actors import EventBus, HealthRegistry
from palmnode.config import IlluminatorConfig, ProximityConfig
from palmnode.devices import illuminator, proximity, session


async def test_proximity_drops_that_end_the_session_are_counted_in_health(nursery, tmp_path):
    emu = ProximityEmulator(tmp_path / "tfmini", seed=7)
    await nursery.start(emu.run)
    emu.set_target(200)
    health = HealthRegistry()
    health.register(proximity.NAME)
    bus = EventBus()

    def ready() -> None:
        emu.corrupt_next(10_000)  # from now on every frame has a bad checksum: no reading at all

    cfg = ProximityConfig(port=str(emu.link), stall_timeout_s=0.3)
    with trio.fail_after(5), pytest.raises(DeviceTimeout, match="no data frame"):
        await proximity.serve(cfg, health, bus, ready)
    assert health.device(proximity.NAME).counters.get("dropped_checksum", 0) > 10


async def test_mirror_stats_copies_the_drops_once_more_when_cancelled(autojump_clock):
    health = HealthRegistry()
    health.register("card_reader")
    drops: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.mirror_stats, health, "card_reader", lambda: (None, drops))
        await trio.sleep(0.1)  # just after a mirror: the bad frames that end the session come now
        drops["garbage"] = 7
        nursery.cancel_scope.cancel()  # what the card reader and illuminator actors do at the end
    assert health.device("card_reader").counters == {"dropped_garbage": 7}


async def test_a_light_request_its_caller_gave_up_on_is_not_served_later(nursery, tmp_path):
    emu = IlluminatorEmulator(tmp_path / "board", seed=7)
    await nursery.start(emu.run)
    lights = illuminator.Lights()
    lights.online = True  # the board was open when the capture asked (it was lost before serving it)
    with trio.move_on_after(0.05):
        await lights.set("ir", 1.0)
    lights.online = False  # the capture, told the light failed, asks nothing more of a board away
    health = HealthRegistry()
    health.register(illuminator.NAME)
    opened = trio.Event()
    async with trio.open_nursery() as actor:
        actor.start_soon(illuminator.serve, IlluminatorConfig(port=str(emu.link)), health, EventBus(),
                         lights, opened.set)
        with trio.fail_after(5):
            await opened.wait()
        await lights.set("surface", 0.0)  # served after anything queued before it
        assert not emu.lights_on  # the stale 'ir on' would have lit the gate for nobody
        actor.cancel_scope.cancel()


@pytest.mark.parametrize("under", ["keys", "keys/palmnode"])
def test_a_token_key_file_whose_folder_is_a_file_says_so(tmp_path, under):
    """The token key file's folder (or one above it) is a file: mkdir's "File exists" or "Not a
    directory" said nothing of which; now the file in the way is named. Nothing is written."""
    from palmnode.devices.card_reader import KeyFileError, load_token_key

    (tmp_path / "keys").write_bytes(b"someone's file")
    path = tmp_path / under / "card_token.key"
    with pytest.raises(KeyFileError) as info:
        load_token_key(path)
    assert str(info.value) == f"cannot create token key file {path}: {tmp_path}/keys is a file, not a folder"
    assert (tmp_path / "keys").read_bytes() == b"someone's file" and sorted(tmp_path.iterdir()) == [tmp_path / "keys"]
