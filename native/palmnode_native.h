/* palmnode native kernels: the one header Python's cffi build reads (native/build.py).
 * Plain C99, no allocation. The only global is the CPU dispatch level (set once, read after);
 * every kernel is safe to call with the GIL released from several threads at once.
 * C assumes valid sizes: palmnode/biometrics/kernels.py validates every argument first. */
#ifndef PALMNODE_NATIVE_H
#define PALMNODE_NATIVE_H
#include <stdint.h>
#include <stddef.h>

/* cdef-begin: native/build.py hands the declarations up to cdef-end to cffi */
/* CPU path used by the popcount kernels: 0 portable (SWAR), 1 POPCNT, 2 AVX2 (+POPCNT),
 * 3 AVX-512 (F, BW, VL, VPOPCNTDQ, BITALG).
 * request < 0 only reports the level (detected on first use); request >= 0 selects
 * min(request, best the CPU supports) for all later calls (tests use it to check every path). */
int pn_dispatch_level(int request);

/* Number of bits set in (a ^ b) & ma & mb, and in ma & mb, over n 64-bit words.
 * The masked Hamming distance between two bit-packed codes is bits_differ / bits_valid. */
void pn_hamming_masked(const uint64_t *a, const uint64_t *b,
                       const uint64_t *ma, const uint64_t *mb, size_t n,
                       uint64_t *bits_differ, uint64_t *bits_valid);

/* Even-filter bank responses at grid points only (no full-image convolution).
 * img: int16 pixels, row stride `stride` elements. bank: n_orient filters of kh rows x kw
 * columns (kw a multiple of 8, zero padded on the right). For cell (i, j), i < gh, j < gw,
 * the filter window's top-left pixel is (y0 + i*step, x0 + j*step) and must lie with the
 * whole window inside img. out[(i*gw + j)*n_orient + o] = sum of pixel*tap (exact int32). */
void pn_gabor_responses(const int16_t *img, size_t stride,
                        const int16_t *bank, int n_orient, int kh, int kw,
                        int y0, int x0, int step, int gh, int gw, int32_t *out);

/* Shift-tolerant masked match of one probe modality against n gallery records.
 * A modality code is 4 planes of `rows` uint32 words (3 code bit-planes, then the validity
 * mask; bit x of word y is grid cell (y, x)); rows even, <= 64; max_dx, max_dy <= 8.
 * Record k starts at records + idx[k]*stride_words + offset_words.
 * For each shift (dx, dy) probe cell (y, x) meets record cell (y+dy, x+dx); with
 * D = differing code bits and V = 3*(jointly valid cells):
 *   hd = V ? 0.5 - (0.5 - D/V) * sqrt(V / n_ref) : 0.5     (Daugman-style normalisation)
 * out_hd[k] = the minimum over shifts (first in dy-major, dx-minor order on ties);
 * out_shift[k] (if not NULL) = (dy + 8) * 32 + (dx + 8) of that shift;
 * out_valid[k] (if not NULL) = V at that shift. */
void pn_match_shifted(const uint32_t *probe, int rows, int max_dx, int max_dy,
                      const uint32_t *records, size_t stride_words, size_t offset_words,
                      const int64_t *idx, size_t n, double n_ref,
                      double *out_hd, int32_t *out_shift, int32_t *out_valid);

/* Pre-filter vein stage: pn_match_shifted restricted to the low 16 bit columns of exactly 16
 * rows (vein codes; bits 16-31 of every row, probe after its shift and record, are ignored),
 * same normalised distance and tie order, distance only. AVX2 holds one plane in one register. */
void pn_match_shifted16(const uint32_t *probe, int max_dx, int max_dy,
                        const uint32_t *records, size_t stride_words, size_t offset_words,
                        const int64_t *idx, size_t n, double n_ref, double *out_hd);

/* Pre-filter vein stage: block-wise match of 16x16 codes (bits 16-31 of every row ignored) around
 * shift 0: the grid is cut into 16 blocks of 4x4 cells and every block takes the shift (ey, ex),
 * |ey|, |ex| <= radius (<= 8), with the most agreeing minus differing code bits V_b - 2 D_b
 * (first in ey-major, ex-minor order on ties); out_hd[k] = the normalised distance of the summed
 * (D, V) as in pn_match_shifted. Equal to pn_match_elastic with bh = bw = 4, centre (0, 0) on the
 * codes' low 16 columns. AVX2 keeps one plane in one register and 16 blocks in bytes. */
void pn_match_elastic16(const uint32_t *probe, int radius, const uint32_t *records, size_t stride_words,
                        size_t offset_words, const int64_t *idx, size_t n, double n_ref, double *out_hd);

/* Block-wise (elastic) refinement of a shifted match. The code grid (rows x 32 bit columns) is
 * split into blocks of bh rows x bw columns (bh divides rows, bw divides 32; at most 64 blocks).
 * For record k, centre[k] is a shift code (dy + 8) * 32 + (dx + 8) (e.g. pn_match_shifted's
 * best shift); each block independently takes the shift (cdy, cdx) + (ey, ex), |ey|, |ex| <= radius
 * (|cdy| + radius, |cdx| + radius <= 8), that maximises V_b - 2*D_b (agreeing minus differing
 * code bits; D_b differing code bits, V_b = 3 * jointly valid cells of the block at that shift; first in
 * ey-major, ex-minor order on ties). With D, V the sums over blocks:
 *   out_hd[k] = V ? 0.5 - (0.5 - D/V) * sqrt(V / n_ref) : 0.5;  out_valid[k] (if not NULL) = V. */
void pn_match_elastic(const uint32_t *probe, int rows, int bh, int bw, int radius,
                      const uint32_t *records, size_t stride_words, size_t offset_words,
                      const int64_t *idx, const int32_t *centre, size_t n, double n_ref,
                      double *out_hd, int32_t *out_valid);

/* Pre-filter signatures of n_codes vein codes (16 rows x 16 cells, 4 planes of 16 uint32 rows
 * each, as in pn_match_shifted; bits 16-31 ignored), each moved by n_offsets offsets
 * (offsets[2*p] = dy, offsets[2*p+1] = dx cells: cell (y, x) -> (y+dy, x+dx), cells moved in are
 * invalid, cells moved out are dropped). Per (code, offset) 8 words at out[(c*n_offsets + p)*8]:
 * two 8x8 coarse codes (3 planes + block mask, bit 8*by + bx), words 0-3 of the 2x2-cell blocks
 * at even cells of the moved code, words 4-7 at odd cells (rows/columns 2b+1, 2b+2). A block
 * votes its valid cells' orientations (circular code -> 0..5; the 2 non-code values vote for
 * nothing) with agreement round(100 cos(60 deg (j - k))); its code is the first best; it is valid
 * when it holds a voting cell and best agreement * 2 >= (votes * 100) / 2. Plain C (tiny). */
void pn_vein_signatures(const uint32_t *planes, size_t n_codes, const int32_t *offsets,
                        size_t n_offsets, uint64_t *out);

/* Pre-filter scan over n 8-word signatures against n_groups groups of n_probes >= 1 probe
 * signatures each (e.g. a probe template's signature at a few grid offsets per group, one group
 * per template; probe q of group g at probe_sigs[8 * (g * n_probes + q)]) (64 bytes each: two
 * halves of 4 words [3 code planes, mask], 8x8 cells per word; pn_vein_signatures makes them).
 * score = 384 + 2*D - V  (D differing code bits where both valid, V = 3*jointly valid cells,
 * i.e. 2 x (D + unknown bits / 2): an unknown bit counts as half a difference); lower is
 * closer; 0..768. norm (NULL: none; indexed like the probes) puts the probes' scores on one
 * scale before the minimum: probe q's score s becomes
 * clamp((s * norm[2q] + norm[2q+1]) >> PN_NORM_SHIFT, 0, PN_NORM_MAX)
 * (norm[2q] in 1..65535; e.g. its standardised score, the pre-filter's pair normalisation).
 * out[g * out_stride + k] = the minimum score over group g's probes; live[k] == 0 marks a
 * removed entry: 0xFFFF. out_stride == 0: one row, out[k] = the minimum over all groups, and
 * owner[k] (owner may be NULL; n_groups <= 256) the first group attaining it (0 for removed
 * entries). One pass over the signatures for all groups on AVX-512. */
#define PN_NORM_SHIFT 10
#define PN_NORM_MAX 1023
void pn_prefilter_scores(const uint64_t *probe_sigs, size_t n_groups, size_t n_probes, const int32_t *norm,
                         const uint64_t *sigs, const uint8_t *live, size_t n, uint16_t *out, size_t out_stride,
                         uint8_t *owner);

/* The k entries with the smallest (score, index) among scores < 1024, written to out_idx in
 * increasing index order; returns how many were written (< k when fewer qualify). */
size_t pn_select_smallest(const uint16_t *scores, size_t n, size_t k, int64_t *out_idx);
/* cdef-end */

/* Shared by the kernel sources (not part of the Python-facing API above). */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define PN_X86 1
#include <immintrin.h>
#else
#define PN_X86 0
#endif
#define PN_INLINE static inline __attribute__((always_inline))

#endif
