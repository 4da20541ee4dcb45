/* palmnode native kernels: the one header Python's cffi build reads (native/build.py).
 * Plain C99, no allocation, no global state: every function is safe to call with the GIL
 * released from several threads at once. */
#ifndef PALMNODE_NATIVE_H
#define PALMNODE_NATIVE_H
#include <stdint.h>
#include <stddef.h>

/* cdef-begin: native/build.py hands the declarations up to cdef-end to cffi */
/* Number of bits set in (a ^ b) & ma & mb, and in ma & mb, over n 64-bit words.
 * The masked Hamming distance between two bit-packed codes is bits_differ / bits_valid. */
void pn_hamming_masked(const uint64_t *a, const uint64_t *b,
                       const uint64_t *ma, const uint64_t *mb, size_t n,
                       uint64_t *bits_differ, uint64_t *bits_valid);
/* cdef-end */

#endif
