#include "palmnode_native.h"

/* __builtin_popcountll compiles to POPCNT where -mpopcnt/-march allows, else a portable path. */
void pn_hamming_masked(const uint64_t *a, const uint64_t *b,
                       const uint64_t *ma, const uint64_t *mb, size_t n,
                       uint64_t *bits_differ, uint64_t *bits_valid)
{
    uint64_t differ = 0, valid = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t m = ma[i] & mb[i];
        differ += (uint64_t)__builtin_popcountll((a[i] ^ b[i]) & m);
        valid += (uint64_t)__builtin_popcountll(m);
    }
    *bits_differ = differ;
    *bits_valid = valid;
}
