/* Popcount kernels: masked Hamming, shift-tolerant match, pre-filter scan, shortlist select.
 * Each hot loop exists in up to four builds selected at run time (pn_dispatch_level):
 * portable SWAR popcount, hardware POPCNT, AVX2 (nibble-table popcount, Mula et al.) and, for the
 * search's hot loops, AVX-512 (VPOPCNTDQ / BITALG popcounts, ternary logic), compiled with
 * target attributes so the extension also runs on CPUs without them. */
#include "palmnode_native.h"

#include <math.h>
#include <string.h>


/* popcount of each nibble value, for the AVX2 nibble-table popcount (Mula et al.) */
#define NIBBLE_POPCOUNT_LUT _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, \
                                             0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4)

/* target of the AVX-512 paths (dispatch level 3) */
#define PN_AVX512 "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vpopcntdq,avx512bitalg,popcnt"

static int pn_level = -1;

static int pn_detect(void)
{
#if PN_X86
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("popcnt")) return 0;
    if (!__builtin_cpu_supports("avx2")) return 1;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vpopcntdq")
        && __builtin_cpu_supports("avx512bitalg")) {
        return 3;
    }
    return 2;
#endif
    return 0;
}

int pn_dispatch_level(int request)
{
    int best = pn_detect();
    if (request >= 0) {
        pn_level = request < best ? request : best;
    } else if (pn_level < 0) {
        pn_level = best;
    }
    return pn_level;
}

static inline int level(void) { return pn_level >= 0 ? pn_level : pn_dispatch_level(-1); }

PN_INLINE uint64_t pc_swar(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (x * 0x0101010101010101ULL) >> 56;
}

/* hw != 0 only inside functions compiled with target("popcnt"): the builtin becomes POPCNT. */
#define PC(hw, x) ((hw) ? (uint64_t)__builtin_popcountll(x) : pc_swar(x))

/* ---------------------------------------------------------------- masked Hamming */
PN_INLINE void hamming_body(const uint64_t *a, const uint64_t *b, const uint64_t *ma,
                            const uint64_t *mb, size_t n, uint64_t *bd, uint64_t *bv, int hw)
{
    uint64_t differ = 0, valid = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t m = ma[i] & mb[i];
        differ += PC(hw, (a[i] ^ b[i]) & m);
        valid += PC(hw, m);
    }
    *bd = differ;
    *bv = valid;
}

static void hamming_portable(const uint64_t *a, const uint64_t *b, const uint64_t *ma,
                             const uint64_t *mb, size_t n, uint64_t *bd, uint64_t *bv)
{
    hamming_body(a, b, ma, mb, n, bd, bv, 0);
}

#if PN_X86
__attribute__((target("popcnt")))
static void hamming_popcnt(const uint64_t *a, const uint64_t *b, const uint64_t *ma,
                           const uint64_t *mb, size_t n, uint64_t *bd, uint64_t *bv)
{
    hamming_body(a, b, ma, mb, n, bd, bv, 1);
}
#endif

void pn_hamming_masked(const uint64_t *a, const uint64_t *b, const uint64_t *ma,
                       const uint64_t *mb, size_t n, uint64_t *bits_differ, uint64_t *bits_valid)
{
#if PN_X86
    if (level() >= 1) {
        hamming_popcnt(a, b, ma, mb, n, bits_differ, bits_valid);
        return;
    }
#endif
    hamming_portable(a, b, ma, mb, n, bits_differ, bits_valid);
}

/* ---------------------------------------------------------------- shifted match */
#define PN_MAX_ROWS 64
#define PN_MAX_SHIFT 8
#define PN_PAD_ROWS (PN_MAX_ROWS + 2 * PN_MAX_SHIFT)
#define PN_PREFETCH 8   /* entries ahead whose record the AVX2 loops prefetch */

#if PN_X86
/* Scattered entries (DRAM latency bound): fetch the record PN_PREFETCH entries ahead of entry k. */
PN_INLINE void prefetch_ahead(const uint32_t *records, const int64_t *idx, size_t k, size_t n,
                              size_t stride_words, size_t offset_words, int bytes)
{
    if (k + PN_PREFETCH < n) {
        const char *f = (const char *)(records + (size_t)idx[k + PN_PREFETCH] * stride_words + offset_words);
        for (int l = 0; l < bytes; l += 64) _mm_prefetch(f + l, _MM_HINT_T0);
    }
}
#endif

static inline uint32_t shift_row(uint32_t w, int dx)
{
    return dx >= 0 ? (uint32_t)(w << dx) : (w >> (-dx));
}

static inline uint64_t load64(const uint32_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* shifted[dx][plane][PN_MAX_SHIFT + y]: probe plane row y shifted by dx, zero rows around it. */
typedef uint32_t shifted_probe_t[2 * PN_MAX_SHIFT + 1][4][PN_PAD_ROWS];

static void build_shifted(const uint32_t *probe, int rows, int max_dx, shifted_probe_t sh)
{
    for (int dx = -max_dx; dx <= max_dx; dx++) {
        for (int p = 0; p < 4; p++) {
            uint32_t *dst = sh[dx + max_dx][p];
            memset(dst, 0, sizeof(uint32_t) * PN_PAD_ROWS);
            for (int y = 0; y < rows; y++) {
                dst[PN_MAX_SHIFT + y] = shift_row(probe[p * rows + y], dx);
            }
        }
    }
}

PN_INLINE void match_body(const uint32_t *probe, int rows, int max_dx, int max_dy,
                          const uint32_t *records, size_t stride_words, size_t offset_words,
                          const int64_t *idx, size_t n, double n_ref,
                          double *out_hd, int32_t *out_shift, int32_t *out_valid, int hw)
{
    shifted_probe_t sh;
    build_shifted(probe, rows, max_dx, sh);
    const int words = rows / 2;
    for (size_t k = 0; k < n; k++) {
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        double best = 2.0;
        int32_t best_shift = 0, best_valid = 0;
        for (int dy = -max_dy; dy <= max_dy; dy++) {
            for (int dx = -max_dx; dx <= max_dx; dx++) {
                /* record row j meets probe row j - dy */
                const int start = PN_MAX_SHIFT - dy;
                const uint32_t *a0 = sh[dx + max_dx][0] + start;
                const uint32_t *a1 = sh[dx + max_dx][1] + start;
                const uint32_t *a2 = sh[dx + max_dx][2] + start;
                const uint32_t *am = sh[dx + max_dx][3] + start;
                uint64_t d = 0, v = 0;
                for (int w = 0; w < words; w++) {
                    uint64_t m = load64(am + 2 * w) & load64(rec + 3 * rows + 2 * w);
                    uint64_t x0 = (load64(a0 + 2 * w) ^ load64(rec + 2 * w)) & m;
                    uint64_t x1 = (load64(a1 + 2 * w) ^ load64(rec + rows + 2 * w)) & m;
                    uint64_t x2 = (load64(a2 + 2 * w) ^ load64(rec + 2 * rows + 2 * w)) & m;
                    uint64_t ones = x0 ^ x1 ^ x2;              /* carry-save add of 3 words */
                    uint64_t twos = (x0 & x1) | (x2 & (x0 ^ x1));
                    d += PC(hw, ones) + 2 * PC(hw, twos);
                    v += PC(hw, m);
                }
                double hd = 0.5;
                if (v) {
                    const double vv = (double)(3 * v);
                    hd = 0.5 - (0.5 - (double)d / vv) * sqrt(vv / n_ref);
                }
                if (hd < best) {
                    best = hd;
                    best_shift = (dy + PN_MAX_SHIFT) * 32 + (dx + PN_MAX_SHIFT);
                    best_valid = (int32_t)(3 * v);
                }
            }
        }
        out_hd[k] = best;
        if (out_shift) out_shift[k] = best_shift;
        if (out_valid) out_valid[k] = best_valid;
    }
}

static void match_portable(const uint32_t *probe, int rows, int max_dx, int max_dy,
                           const uint32_t *records, size_t stride_words, size_t offset_words,
                           const int64_t *idx, size_t n, double n_ref,
                           double *out_hd, int32_t *out_shift, int32_t *out_valid)
{
    match_body(probe, rows, max_dx, max_dy, records, stride_words, offset_words, idx, n, n_ref,
               out_hd, out_shift, out_valid, 0);
}

#if PN_X86
__attribute__((target("popcnt")))
static void match_popcnt(const uint32_t *probe, int rows, int max_dx, int max_dy,
                         const uint32_t *records, size_t stride_words, size_t offset_words,
                         const int64_t *idx, size_t n, double n_ref,
                         double *out_hd, int32_t *out_shift, int32_t *out_valid)
{
    match_body(probe, rows, max_dx, max_dy, records, stride_words, offset_words, idx, n, n_ref,
               out_hd, out_shift, out_valid, 1);
}
#endif

#if PN_X86
__attribute__((target("avx2"))) PN_INLINE __m256i popcount8(__m256i x, __m256i lut, __m256i low)
{
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x, low)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low)));
}

/* AVX2: 8 rows per vector. For every shift the byte-wise counts of (differing bits, valid
 * cells) are summed by vpsadbw; the (D, V) of all shifts are kept, then the distance of every
 * shift is computed 4 at a time with the same correctly rounded IEEE operations as the scalar
 * path (sub, div, sqrt, mul), and the first minimum taken in the same order: identical output. */
__attribute__((target("avx2"))) PN_INLINE __m256i ld256(const uint32_t *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* Per-byte bit counts of one 256-bit slice of a probe (planes p0..p2, mask pm) against a record
 * (r0..r2, rm): differing code bits, the three planes summed (cd), and jointly valid cells (cv). */
__attribute__((target("avx2"))) PN_INLINE void code_counts(__m256i p0, __m256i p1, __m256i p2, __m256i pm,
                                                           __m256i r0, __m256i r1, __m256i r2, __m256i rm,
                                                           __m256i lut, __m256i low, __m256i *cd, __m256i *cv)
{
    __m256i m = _mm256_and_si256(pm, rm);
    __m256i x0 = _mm256_and_si256(_mm256_xor_si256(p0, r0), m);
    __m256i x1 = _mm256_and_si256(_mm256_xor_si256(p1, r1), m);
    __m256i x2 = _mm256_and_si256(_mm256_xor_si256(p2, r2), m);
    __m256i x01 = _mm256_xor_si256(x0, x1);
    __m256i ones = _mm256_xor_si256(x01, x2);             /* carry-save: bits differing in 1 or 3 planes */
    __m256i twos = _mm256_or_si256(_mm256_and_si256(x0, x1), _mm256_and_si256(x2, x01));
    __m256i pt = popcount8(twos, lut, low);
    *cd = _mm256_add_epi8(popcount8(ones, lut, low), _mm256_add_epi8(pt, pt));
    *cv = popcount8(m, lut, low);
}

/* The bit counts of one shift: differing bits (x3 planes summed in cd) and valid cells (cv). */
__attribute__((target("avx2"))) PN_INLINE void count_totals(__m256i cd, __m256i cv, int64_t *d, int64_t *v)
{
    const __m256i zero = _mm256_setzero_si256();
    __m256i sd = _mm256_sad_epu8(cd, zero), sv = _mm256_sad_epu8(cv, zero);
    __m256i sum = _mm256_add_epi64(_mm256_unpacklo_epi64(sd, sv), _mm256_unpackhi_epi64(sd, sv));
    __m128i t = _mm_add_epi64(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    *d = _mm_cvtsi128_si64(t);
    *v = 3 * _mm_extract_epi64(t, 1);
}

/* Normalised distances of nshift shifts, four at a time (dd/vv have room for 4 more, zeroed);
 * the same float64 operations in the same order as the scalar path and the NumPy reference. */
__attribute__((target("avx2"))) PN_INLINE void normalised_hd(int64_t *dd, int64_t *vv, int nshift,
                                                             __m256d half, __m256d nr, double *hdv)
{
    for (int j = nshift; j < nshift + 4; j++) { dd[j] = 0; vv[j] = 0; }
    for (int j = 0; j < nshift; j += 4) {
        /* int64 -> double exactly (values < 2^31) via int32 */
        __m128i d32 = _mm_setr_epi32((int)dd[j], (int)dd[j + 1], (int)dd[j + 2], (int)dd[j + 3]);
        __m128i v32 = _mm_setr_epi32((int)vv[j], (int)vv[j + 1], (int)vv[j + 2], (int)vv[j + 3]);
        __m256d d = _mm256_cvtepi32_pd(d32), v = _mm256_cvtepi32_pd(v32);
        __m256d h = _mm256_sub_pd(half, _mm256_mul_pd(_mm256_sub_pd(half, _mm256_div_pd(d, v)),
                                                     _mm256_sqrt_pd(_mm256_div_pd(v, nr))));
        __m256d novalid = _mm256_cmp_pd(v, _mm256_setzero_pd(), _CMP_EQ_OQ);
        _mm256_storeu_pd(hdv + j, _mm256_blendv_pd(h, half, novalid));
    }
}

/* Entry k's outputs from the (D, V) of its nshift shifts (dd/vv with room for 4 more): the
 * first minimum of the normalised distances, its shift code and V. */
__attribute__((target("avx2"))) PN_INLINE void store_best(int64_t *dd, int64_t *vv, int nshift, int nx, int max_dx,
                                                          int max_dy, double n_ref, size_t k, double *out_hd,
                                                          int32_t *out_shift, int32_t *out_valid)
{
    double hdv[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1) + 4];
    normalised_hd(dd, vv, nshift, _mm256_set1_pd(0.5), _mm256_set1_pd(n_ref), hdv);
    double best = 2.0;
    int bs = -1;
    for (int j = 0; j < nshift; j++) {
        if (hdv[j] < best) { best = hdv[j]; bs = j; }
    }
    out_hd[k] = best;
    if (out_shift) out_shift[k] = bs < 0 ? 0 : (bs / nx - max_dy + PN_MAX_SHIFT) * 32 + (bs % nx - max_dx + PN_MAX_SHIFT);
    if (out_valid) out_valid[k] = bs < 0 ? 0 : (int32_t)vv[bs];
}

__attribute__((target("avx2,popcnt")))
static void match_avx2(const uint32_t *probe, int rows, int max_dx, int max_dy,
                       const uint32_t *records, size_t stride_words, size_t offset_words,
                       const int64_t *idx, size_t n, double n_ref,
                       double *out_hd, int32_t *out_shift, int32_t *out_valid)
{
    shifted_probe_t sh;
    build_shifted(probe, rows, max_dx, sh);
    const __m256i lut = NIBBLE_POPCOUNT_LUT;
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i zero = _mm256_setzero_si256();
    const int chunks = rows / 8;
    const int nx = 2 * max_dx + 1, nshift = nx * (2 * max_dy + 1);
    int64_t dd[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1) + 4];
    int64_t vv[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1) + 4];
    for (size_t k = 0; k < n; k++) {
        prefetch_ahead(records, idx, k, n, stride_words, offset_words, 16 * rows);
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        int s = 0;
        for (int dy = -max_dy; dy <= max_dy; dy++) {
            const int start = PN_MAX_SHIFT - dy;
            for (int dx = -max_dx; dx <= max_dx; dx++, s++) {
                const uint32_t *a0 = sh[dx + max_dx][0] + start;
                const uint32_t *a1 = sh[dx + max_dx][1] + start;
                const uint32_t *a2 = sh[dx + max_dx][2] + start;
                const uint32_t *am = sh[dx + max_dx][3] + start;
                __m256i cd = zero, cv = zero;
                for (int c = 0; c < chunks; c++) {
                    const int o = 8 * c;
                    __m256i bd, bv;
                    code_counts(ld256(a0 + o), ld256(a1 + o), ld256(a2 + o), ld256(am + o),
                                ld256(rec + o), ld256(rec + rows + o), ld256(rec + 2 * rows + o), ld256(rec + 3 * rows + o),
                                lut, low, &bd, &bv);
                    cd = _mm256_add_epi8(cd, bd);
                    cv = _mm256_add_epi8(cv, bv);
                }
                /* bytes: cd <= 24 per chunk, cv <= 8 per chunk, chunks <= 8: no overflow */
                count_totals(cd, cv, dd + s, vv + s);
            }
        }
        store_best(dd, vv, nshift, nx, max_dx, max_dy, n_ref, k, out_hd, out_shift, out_valid);
    }
}
#endif

#if PN_X86
/* AVX-512: 16 rows per register, per chunk x = (p ^ r) & joint mask by ternary logic, the
 * carry-save adder in two more ops, vpopcntq per 64-bit lane; each shift's (D, V) reduced from
 * the lanes, then the distances and the first minimum exactly as in match_avx2. */
__attribute__((target(PN_AVX512)))
static void match_avx512(const uint32_t *probe, int rows, int max_dx, int max_dy,
                         const uint32_t *records, size_t stride_words, size_t offset_words,
                         const int64_t *idx, size_t n, double n_ref,
                         double *out_hd, int32_t *out_shift, int32_t *out_valid)
{
    shifted_probe_t sh;
    build_shifted(probe, rows, max_dx, sh);
    const int chunks = rows / 16;
    const int nx = 2 * max_dx + 1, nshift = nx * (2 * max_dy + 1);
    int64_t dd[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1) + 4];
    int64_t vv[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1) + 4];
    for (size_t k = 0; k < n; k++) {
        prefetch_ahead(records, idx, k, n, stride_words, offset_words, 16 * rows);
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        int s = 0;
        for (int dy = -max_dy; dy <= max_dy; dy++) {
            const int start = PN_MAX_SHIFT - dy;
            for (int dx = -max_dx; dx <= max_dx; dx++, s++) {
                const uint32_t *a = sh[dx + max_dx][0] + start;
                __m512i cd = _mm512_setzero_si512(), cv = cd;
                for (int c = 0; c < chunks; c++) {
                    const int o = 16 * c;
                    const __m512i m = _mm512_and_si512(_mm512_loadu_si512((const void *)(a + 3 * PN_PAD_ROWS + o)),
                                                       _mm512_loadu_si512((const void *)(rec + 3 * rows + o)));
                    __m512i x[3];
                    for (int p = 0; p < 3; p++) {
                        x[p] = _mm512_ternarylogic_epi64(_mm512_loadu_si512((const void *)(a + p * PN_PAD_ROWS + o)),
                                                         _mm512_loadu_si512((const void *)(rec + p * rows + o)), m, 0x28);
                    }
                    const __m512i twos = _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(x[0], x[1], x[2], 0xE8));
                    cd = _mm512_add_epi64(cd, _mm512_add_epi64(_mm512_popcnt_epi64(_mm512_ternarylogic_epi64(x[0], x[1], x[2], 0x96)),
                                                               _mm512_add_epi64(twos, twos)));
                    cv = _mm512_add_epi64(cv, _mm512_popcnt_epi64(m));
                }
                /* lanes of (D, cells) pairs, folded to one pair */
                __m512i t = _mm512_add_epi64(_mm512_unpacklo_epi64(cd, cv), _mm512_unpackhi_epi64(cd, cv));
                __m256i u = _mm256_add_epi64(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1));
                __m128i w = _mm_add_epi64(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
                dd[s] = _mm_cvtsi128_si64(w);
                vv[s] = 3 * _mm_extract_epi64(w, 1);
            }
        }
        store_best(dd, vv, nshift, nx, max_dx, max_dy, n_ref, k, out_hd, out_shift, out_valid);
    }
}
#endif

void pn_match_shifted(const uint32_t *probe, int rows, int max_dx, int max_dy,
                      const uint32_t *records, size_t stride_words, size_t offset_words,
                      const int64_t *idx, size_t n, double n_ref,
                      double *out_hd, int32_t *out_shift, int32_t *out_valid)
{
#if PN_X86
    if (level() >= 3 && rows % 16 == 0) {
        match_avx512(probe, rows, max_dx, max_dy, records, stride_words, offset_words, idx, n,
                     n_ref, out_hd, out_shift, out_valid);
        return;
    }
    if (level() >= 2 && rows % 8 == 0) {
        match_avx2(probe, rows, max_dx, max_dy, records, stride_words, offset_words, idx, n,
                   n_ref, out_hd, out_shift, out_valid);
        return;
    }
    if (level() >= 1) {
        match_popcnt(probe, rows, max_dx, max_dy, records, stride_words, offset_words, idx, n,
                     n_ref, out_hd, out_shift, out_valid);
        return;
    }
#endif
    match_portable(probe, rows, max_dx, max_dy, records, stride_words, offset_words, idx, n,
                   n_ref, out_hd, out_shift, out_valid);
}

/* ---------------------------------------------------------------- pre-filter signatures */
/* circular code value (plane bits b0 | b1 << 1 | b2 << 2) -> orientation 0..5, -1 for 010 and 101 */
static const int8_t sig_decode[8] = {0, 1, -1, 2, 5, -1, 4, 3};
static const uint8_t sig_code[6] = {0, 1, 3, 7, 6, 4};
/* round(100 * cos(2 * 30 deg * (j - k))) */
static const int16_t sig_agree[6][6] = {
    {100, 50, -50, -100, -50, 50}, {50, 100, 50, -50, -100, -50}, {-50, 50, 100, 50, -50, -100},
    {-100, -50, 50, 100, 50, -50}, {-50, -100, -50, 50, 100, 50}, {50, -50, -100, -50, 50, 100}};

void pn_vein_signatures(const uint32_t *planes, size_t n_codes, const int32_t *offsets,
                        size_t n_offsets, uint64_t *out)
{
    for (size_t c = 0; c < n_codes; c++) {
        const uint32_t *pl = planes + 64 * c;
        int8_t orient[16][16];           /* -1: no vote (masked or not a code value) */
        for (int y = 0; y < 16; y++) {
            for (int x = 0; x < 16; x++) {
                const unsigned v = ((pl[y] >> x) & 1u) | (((pl[16 + y] >> x) & 1u) << 1)
                                 | (((pl[32 + y] >> x) & 1u) << 2);
                orient[y][x] = ((pl[48 + y] >> x) & 1u) ? sig_decode[v] : -1;
            }
        }
        for (size_t p = 0; p < n_offsets; p++) {
            const int64_t dy = offsets[2 * p], dx = offsets[2 * p + 1];
            uint64_t *o = out + (c * n_offsets + p) * 8;
            for (int phase = 0; phase < 2; phase++) {
                uint64_t w0 = 0, w1 = 0, w2 = 0, wm = 0;
                for (int by = 0; by < 8; by++) {
                    for (int bx = 0; bx < 8; bx++) {
                        int votes[6] = {0, 0, 0, 0, 0, 0}, support = 0;
                        for (int cy = 0; cy < 2; cy++) {
                            for (int cx = 0; cx < 2; cx++) {
                                const int64_t my = 2 * by + phase + cy, mx = 2 * bx + phase + cx;  /* moved cell */
                                const int64_t sy = my - dy, sx = mx - dx;                           /* source cell */
                                if (my > 15 || mx > 15 || sy < 0 || sy > 15 || sx < 0 || sx > 15) continue;
                                const int k = orient[sy][sx];
                                if (k >= 0) {
                                    votes[k]++;
                                    support++;
                                }
                            }
                        }
                        int best = 0, best_agree = 0;
                        for (int k = 0; k < 6; k++) {
                            int a = 0;
                            for (int j = 0; j < 6; j++) a += votes[j] * sig_agree[j][k];
                            if (k == 0 || a > best_agree) {
                                best = k;
                                best_agree = a;
                            }
                        }
                        const uint64_t bit = 1ull << (8 * by + bx);
                        const unsigned code = sig_code[best];
                        if (code & 1u) w0 |= bit;
                        if (code & 2u) w1 |= bit;
                        if (code & 4u) w2 |= bit;
                        if (support * 4 >= 4 && best_agree * 2 >= support * 100 / 2) wm |= bit;
                    }
                }
                o[4 * phase + 0] = w0;
                o[4 * phase + 1] = w1;
                o[4 * phase + 2] = w2;
                o[4 * phase + 3] = wm;
            }
        }
    }
}

/* ---------------------------------------------------------------- pre-filter scan */
PN_INLINE uint16_t sig_score(const uint64_t *p, const uint64_t *s, int hw)
{
    uint64_t d = 0, v = 0;
    for (int half = 0; half < 2; half++) {
        const uint64_t *a = p + 4 * half, *b = s + 4 * half;
        uint64_t m = a[3] & b[3];
        uint64_t x0 = (a[0] ^ b[0]) & m, x1 = (a[1] ^ b[1]) & m, x2 = (a[2] ^ b[2]) & m;
        d += PC(hw, x0) + PC(hw, x1) + PC(hw, x2);
        v += 3 * PC(hw, m);
    }
    return (uint16_t)(384 + 2 * d - v);
}

/* probe q's score after its normalisation (pn_prefilter_scores) */
PN_INLINE uint16_t scan_norm(uint16_t s, const int32_t *norm, size_t q)
{
    if (!norm) return s;
    int64_t t = (int64_t)s * norm[2 * q] + norm[2 * q + 1];
    if (t < 0) return 0;
    t >>= PN_NORM_SHIFT;
    return t > PN_NORM_MAX ? PN_NORM_MAX : (uint16_t)t;
}

PN_INLINE void scan_body(const uint64_t *probe, size_t n_probes, const int32_t *norm, const uint64_t *sigs,
                         const uint8_t *live, size_t n, uint16_t *out, int hw)
{
    for (size_t k = 0; k < n; k++) {
        uint16_t best = 0xFFFF;
        if (live[k]) {
            for (size_t q = 0; q < n_probes; q++) {
                uint16_t s = scan_norm(sig_score(probe + 8 * q, sigs + 8 * k, hw), norm, q);
                best = s < best ? s : best;
            }
        }
        out[k] = best;
    }
}

static void scan_portable(const uint64_t *probe, size_t n_probes, const int32_t *norm, const uint64_t *sigs,
                          const uint8_t *live, size_t n, uint16_t *out)
{
    scan_body(probe, n_probes, norm, sigs, live, n, out, 0);
}

#if PN_X86
__attribute__((target("popcnt")))
static void scan_popcnt(const uint64_t *probe, size_t n_probes, const int32_t *norm, const uint64_t *sigs,
                        const uint8_t *live, size_t n, uint16_t *out)
{
    scan_body(probe, n_probes, norm, sigs, live, n, out, 1);
}

/* One 64-byte signature is two 256-bit lanes groups [c0 c1 c2 mask] (surface, vein).
 * Per group: x = (a ^ p) & broadcast(mask_a & mask_p) in words 0-2, the joint mask in word 3;
 * a nibble-table popcount of both groups, summed per 64-bit word with vpsadbw, gives
 * [D0 D1 D2 cells]; score = 384 + 2*(D0+D1+D2) - 3*cells. */
__attribute__((target("avx2,popcnt")))
static void scan_avx2(const uint64_t *probe, size_t n_probes, const int32_t *norm, const uint64_t *sigs,
                      const uint8_t *live, size_t n, uint16_t *out)
{
    const __m256i lut = NIBBLE_POPCOUNT_LUT;
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i zero = _mm256_setzero_si256();
    for (size_t k = 0; k < n; k++) {
        if (!live[k]) {
            out[k] = 0xFFFF;
            continue;
        }
        const __m256i a0 = _mm256_loadu_si256((const __m256i *)(sigs + 8 * k));
        const __m256i a1 = _mm256_loadu_si256((const __m256i *)(sigs + 8 * k + 4));
        uint16_t best = 0xFFFF;
        for (size_t q = 0; q < n_probes; q++) {
            const __m256i p0 = _mm256_loadu_si256((const __m256i *)(probe + 8 * q));
            const __m256i p1 = _mm256_loadu_si256((const __m256i *)(probe + 8 * q + 4));
            __m256i m0 = _mm256_permute4x64_epi64(_mm256_and_si256(a0, p0), 0xFF);
            __m256i m1 = _mm256_permute4x64_epi64(_mm256_and_si256(a1, p1), 0xFF);
            __m256i y0 = _mm256_blend_epi32(_mm256_and_si256(_mm256_xor_si256(a0, p0), m0), m0, 0xC0);
            __m256i y1 = _mm256_blend_epi32(_mm256_and_si256(_mm256_xor_si256(a1, p1), m1), m1, 0xC0);
            __m256i c0 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(y0, low)),
                                         _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(y0, 4), low)));
            __m256i c1 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(y1, low)),
                                         _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(y1, 4), low)));
            __m256i s = _mm256_sad_epu8(_mm256_add_epi8(c0, c1), zero);
            __m128i lo = _mm256_castsi256_si128(s), hi = _mm256_extracti128_si256(s, 1);
            uint64_t d = (uint64_t)_mm_cvtsi128_si64(lo) + (uint64_t)_mm_extract_epi64(lo, 1)
                       + (uint64_t)_mm_cvtsi128_si64(hi);
            uint64_t v = (uint64_t)_mm_extract_epi64(hi, 1);
            uint16_t sc = scan_norm((uint16_t)(384 + 2 * d - 3 * v), norm, q);
            best = sc < best ? sc : best;
        }
        out[k] = best;
    }
}
#endif

#if PN_X86
/* AVX2, 4 entries per register ("vertical"): the 4 entries' signatures are transposed so that
 * one register holds word w of 4 entries; per probe variant both halves' code words are XORed,
 * masked, reduced by a carry-save adder (ones + 2*twos = the 3 words' bit count), popcounted
 * per byte (nibble table) and summed per entry by vpsadbw: score = 384 + 2D - 3*cells for 4
 * entries at once, the minimum over the variants kept per 64-bit lane. Same integers as the
 * scalar path. */
#define PN_SCAN_MAX_PROBES 64
#define PN_SCAN_MAX_PAIRS 256  /* the AVX-512 scan: probe signatures over all groups */
__attribute__((target("avx2,popcnt"))) PN_INLINE void scan_transpose4(const uint64_t *e, __m256i W[8])
{
    for (int h = 0; h < 2; h++) {
        __m256i r0 = _mm256_loadu_si256((const __m256i *)(e + 4 * h));
        __m256i r1 = _mm256_loadu_si256((const __m256i *)(e + 8 + 4 * h));
        __m256i r2 = _mm256_loadu_si256((const __m256i *)(e + 16 + 4 * h));
        __m256i r3 = _mm256_loadu_si256((const __m256i *)(e + 24 + 4 * h));
        __m256i t0 = _mm256_unpacklo_epi64(r0, r1), t1 = _mm256_unpackhi_epi64(r0, r1);
        __m256i t2 = _mm256_unpacklo_epi64(r2, r3), t3 = _mm256_unpackhi_epi64(r2, r3);
        W[4 * h + 0] = _mm256_permute2x128_si256(t0, t2, 0x20);
        W[4 * h + 1] = _mm256_permute2x128_si256(t1, t3, 0x20);
        W[4 * h + 2] = _mm256_permute2x128_si256(t0, t2, 0x31);
        W[4 * h + 3] = _mm256_permute2x128_si256(t1, t3, 0x31);
    }
}

/* per-byte bit counts of D (differences, weights 1 and 2 from the carry-save adder) and V (cells) */
__attribute__((target("avx2,popcnt"))) PN_INLINE __m256i scan_score4(const __m256i W[8], const __m256i P[8],
                                                                    __m256i lut, __m256i low, __m256i zero,
                                                                    __m256i base)
{
    __m256i ms = _mm256_and_si256(W[3], P[3]), mv = _mm256_and_si256(W[7], P[7]);
    __m256i x0 = _mm256_and_si256(_mm256_xor_si256(W[0], P[0]), ms);
    __m256i x1 = _mm256_and_si256(_mm256_xor_si256(W[1], P[1]), ms);
    __m256i x2 = _mm256_and_si256(_mm256_xor_si256(W[2], P[2]), ms);
    __m256i y0 = _mm256_and_si256(_mm256_xor_si256(W[4], P[4]), mv);
    __m256i y1 = _mm256_and_si256(_mm256_xor_si256(W[5], P[5]), mv);
    __m256i y2 = _mm256_and_si256(_mm256_xor_si256(W[6], P[6]), mv);
    __m256i x01 = _mm256_xor_si256(x0, x1), y01 = _mm256_xor_si256(y0, y1);
    __m256i ones_s = _mm256_xor_si256(x01, x2), ones_v = _mm256_xor_si256(y01, y2);
    __m256i twos_s = _mm256_or_si256(_mm256_and_si256(x0, x1), _mm256_and_si256(x2, x01));
    __m256i twos_v = _mm256_or_si256(_mm256_and_si256(y0, y1), _mm256_and_si256(y2, y01));
    __m256i t = _mm256_add_epi8(popcount8(twos_s, lut, low), popcount8(twos_v, lut, low));
    __m256i db = _mm256_add_epi8(_mm256_add_epi8(popcount8(ones_s, lut, low), popcount8(ones_v, lut, low)),
                                 _mm256_add_epi8(t, t));
    __m256i vb = _mm256_add_epi8(popcount8(ms, lut, low), popcount8(mv, lut, low));
    __m256i d = _mm256_sad_epu8(db, zero), v = _mm256_sad_epu8(vb, zero);
    return _mm256_sub_epi64(_mm256_add_epi64(base, _mm256_add_epi64(d, d)), _mm256_add_epi64(v, _mm256_add_epi64(v, v)));
}

/* scan_norm on 4 scores (64-bit lanes holding 0..768): (s * m + c) >> PN_NORM_SHIFT in [0, PN_NORM_MAX] */
__attribute__((target("avx2,popcnt"))) PN_INLINE __m256i scan_norm4(__m256i s, __m256i m, __m256i c, __m256i zero,
                                                                   __m256i top)
{
    __m256i t = _mm256_add_epi64(_mm256_mul_epu32(s, m), c);
    t = _mm256_andnot_si256(_mm256_cmpgt_epi64(zero, t), t);
    return _mm256_min_epu32(_mm256_srli_epi64(t, PN_NORM_SHIFT), top);     /* < 2^32 after the shift */
}

__attribute__((target("avx2,popcnt")))
static void scan_avx2_vertical(const uint64_t *probe, size_t n_probes, const int32_t *norm, const uint64_t *sigs,
                               const uint8_t *live, size_t n, uint16_t *out)
{
    const __m256i lut = NIBBLE_POPCOUNT_LUT;
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i base = _mm256_set1_epi64x(384);
    const __m256i top = _mm256_set1_epi64x(PN_NORM_MAX);
    __m256i pb[PN_SCAN_MAX_PROBES][8], nm[PN_SCAN_MAX_PROBES], nc[PN_SCAN_MAX_PROBES];
    for (size_t q = 0; q < n_probes; q++) {
        for (int w = 0; w < 8; w++) pb[q][w] = _mm256_set1_epi64x((long long)probe[8 * q + w]);
        nm[q] = _mm256_set1_epi64x(norm ? norm[2 * q] : 0);
        nc[q] = _mm256_set1_epi64x(norm ? norm[2 * q + 1] : 0);
    }
    size_t k = 0;
    /* two groups of 4 entries per pass over the probe variants (each variant's words loaded once) */
    for (; k + 8 <= n; k += 8) {
        __m256i W[8], X[8];
        scan_transpose4(sigs + 8 * k, W);
        scan_transpose4(sigs + 8 * k + 32, X);
        __m256i best = _mm256_set1_epi64x(0xFFFF), best2 = best;
        for (size_t q = 0; q < n_probes; q++) {
            __m256i s = scan_score4(W, pb[q], lut, low, zero, base), s2 = scan_score4(X, pb[q], lut, low, zero, base);
            if (norm) {                                                                  /* lanes hold 0..768 */
                s = scan_norm4(s, nm[q], nc[q], zero, top);
                s2 = scan_norm4(s2, nm[q], nc[q], zero, top);
            }
            best = _mm256_min_epu32(best, s);
            best2 = _mm256_min_epu32(best2, s2);
        }
        uint64_t b[8];
        _mm256_storeu_si256((__m256i *)b, best);
        _mm256_storeu_si256((__m256i *)(b + 4), best2);
        for (int j = 0; j < 8; j++) out[k + j] = live[k + j] ? (uint16_t)b[j] : 0xFFFF;
    }
    for (; k + 4 <= n; k += 4) {
        __m256i W[8];
        scan_transpose4(sigs + 8 * k, W);
        __m256i best = _mm256_set1_epi64x(0xFFFF);
        for (size_t q = 0; q < n_probes; q++) {
            __m256i s = scan_score4(W, pb[q], lut, low, zero, base);
            best = _mm256_min_epu32(best, norm ? scan_norm4(s, nm[q], nc[q], zero, top) : s);
        }
        uint64_t b[4];
        _mm256_storeu_si256((__m256i *)b, best);
        for (int j = 0; j < 4; j++) out[k + j] = live[k + j] ? (uint16_t)b[j] : 0xFFFF;
    }
    if (k < n) scan_popcnt(probe, n_probes, norm, sigs + 8 * k, live + k, n - k, out + k);
}
#endif

/* One group at a time through the AVX2 / POPCNT / portable paths (out_stride 0: each group's
 * scores of a block of entries into a stack buffer, merged into the running minimum). */
#define PN_SCAN_BLOCK 512
static void scan_one(const uint64_t *p, size_t n_probes, const int32_t *nrm, const uint64_t *sigs,
                     const uint8_t *live, size_t n, uint16_t *o)
{
#if PN_X86
    const int lv = level();
    if (lv >= 2 && n_probes <= PN_SCAN_MAX_PROBES) {
        scan_avx2_vertical(p, n_probes, nrm, sigs, live, n, o);
        return;
    }
    if (lv >= 2) {
        scan_avx2(p, n_probes, nrm, sigs, live, n, o);
        return;
    }
    if (lv >= 1) {
        scan_popcnt(p, n_probes, nrm, sigs, live, n, o);
        return;
    }
#endif
    scan_portable(p, n_probes, nrm, sigs, live, n, o);
}

static void scan_groups(const uint64_t *probe, size_t n_groups, size_t n_probes, const int32_t *norm,
                        const uint64_t *sigs, const uint8_t *live, size_t n, uint16_t *out, size_t out_stride,
                        uint8_t *owner)
{
    if (out_stride) {
        for (size_t g = 0; g < n_groups; g++) {
            scan_one(probe + 8 * g * n_probes, n_probes, norm ? norm + 2 * g * n_probes : NULL, sigs, live, n,
                     out + g * out_stride);
        }
        return;
    }
    uint16_t part[PN_SCAN_BLOCK];
    for (size_t a = 0; a < n; a += PN_SCAN_BLOCK) {
        const size_t m = n - a < PN_SCAN_BLOCK ? n - a : PN_SCAN_BLOCK;
        scan_one(probe, n_probes, norm, sigs + 8 * a, live + a, m, out + a);
        if (owner) memset(owner + a, 0, m);
        for (size_t g = 1; g < n_groups; g++) {
            scan_one(probe + 8 * g * n_probes, n_probes, norm ? norm + 2 * g * n_probes : NULL, sigs + 8 * a,
                     live + a, m, part);
            for (size_t j = 0; j < m; j++) {
                if (part[j] < out[a + j]) {
                    out[a + j] = part[j];
                    if (owner) owner[a + j] = (uint8_t)g;
                }
            }
        }
    }
}

#if PN_X86
/* 2 D - 3 cells (-384..384) of 8 entries (W: word w of each) against probe words p (broadcast
 * from memory: the probes stay in L1) */
__attribute__((target(PN_AVX512))) PN_INLINE __m512i scan_u8(const __m512i W[8], const uint64_t *p)
{
    const __m512i ms = _mm512_and_si512(W[3], _mm512_set1_epi64((long long)p[3]));
    const __m512i mv = _mm512_and_si512(W[7], _mm512_set1_epi64((long long)p[7]));
    /* 0x28: (a ^ b) & c;  0x96: a ^ b ^ c;  0xE8: majority(a, b, c) */
    const __m512i x0 = _mm512_ternarylogic_epi64(W[0], _mm512_set1_epi64((long long)p[0]), ms, 0x28);
    const __m512i x1 = _mm512_ternarylogic_epi64(W[1], _mm512_set1_epi64((long long)p[1]), ms, 0x28);
    const __m512i x2 = _mm512_ternarylogic_epi64(W[2], _mm512_set1_epi64((long long)p[2]), ms, 0x28);
    const __m512i y0 = _mm512_ternarylogic_epi64(W[4], _mm512_set1_epi64((long long)p[4]), mv, 0x28);
    const __m512i y1 = _mm512_ternarylogic_epi64(W[5], _mm512_set1_epi64((long long)p[5]), mv, 0x28);
    const __m512i y2 = _mm512_ternarylogic_epi64(W[6], _mm512_set1_epi64((long long)p[6]), mv, 0x28);
    const __m512i ones = _mm512_add_epi64(_mm512_popcnt_epi64(_mm512_ternarylogic_epi64(x0, x1, x2, 0x96)),
                                          _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(y0, y1, y2, 0x96)));
    const __m512i twos = _mm512_add_epi64(_mm512_popcnt_epi64(_mm512_ternarylogic_epi64(x0, x1, x2, 0xE8)),
                                          _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(y0, y1, y2, 0xE8)));
    const __m512i cells = _mm512_add_epi64(_mm512_popcnt_epi64(ms), _mm512_popcnt_epi64(mv));
    return _mm512_sub_epi64(_mm512_slli_epi64(_mm512_add_epi64(ones, _mm512_add_epi64(twos, twos)), 1),
                            _mm512_add_epi64(cells, _mm512_add_epi64(cells, cells)));
}

/* W[w] = word w of the 8 signatures at e (an 8x8 transpose of 64-bit words) */
__attribute__((target(PN_AVX512))) PN_INLINE void scan_transpose8(const uint64_t *e, __m512i W[8])
{
    __m512i r[8], t[8];
    for (int i = 0; i < 8; i++) r[i] = _mm512_loadu_si512((const void *)(e + 8 * i));
    for (int i = 0; i < 8; i += 2) {          /* t[i] = r_i0 r_(i+1)0 r_i2 r_(i+1)2 ..., t[i+1] the odd words */
        t[i] = _mm512_unpacklo_epi64(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi64(r[i], r[i + 1]);
    }
    /* 128-bit lane l of t[i] holds words 2l (+1) of entries i, i+1; gather lane l of t[0], t[2],
     * t[4], t[6] (entries 0-7) into one register per word */
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), hi = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for (int odd = 0; odd < 2; odd++) {
        const __m512i a = _mm512_permutex2var_epi64(t[odd], lo, t[2 + odd]);      /* lanes 0, 1 */
        const __m512i b = _mm512_permutex2var_epi64(t[4 + odd], lo, t[6 + odd]);
        const __m512i c = _mm512_permutex2var_epi64(t[odd], hi, t[2 + odd]);      /* lanes 2, 3 */
        const __m512i d = _mm512_permutex2var_epi64(t[4 + odd], hi, t[6 + odd]);
        /* a = [e0w(0) e1w(0) e2w(0) e3w(0) | e0w(2) e1w(2) e2w(2) e3w(2)] (w(l) = 2l + odd), b: entries 4-7 */
        W[0 + odd] = _mm512_shuffle_i64x2(a, b, 0x44);
        W[2 + odd] = _mm512_shuffle_i64x2(a, b, 0xEE);
        W[4 + odd] = _mm512_shuffle_i64x2(c, d, 0x44);
        W[6 + odd] = _mm512_shuffle_i64x2(c, d, 0xEE);
    }
}

/* AVX-512 (VPOPCNTDQ), 8 entries per register: word w of 8 entries transposed into one register,
 * per probe variant x = (e ^ p) & joint mask by one ternary-logic op per code word, the carry-save
 * adder in two more, vpopcntq per 64-bit lane. The standardisation is affine and the clamp and
 * shift after it monotonic, so only t = u * m + (384 m + c) is formed per variant (m = 1 <<
 * PN_NORM_SHIFT, c = 0 without norm) and the minimum over variants is clamped and shifted once.
 * Two groups of 8 entries per pass over the variants. Same integers as the scalar path. */
__attribute__((target(PN_AVX512)))
static void scan_avx512(const uint64_t *probe, size_t n_groups, size_t n_probes, const int32_t *norm,
                        const uint64_t *sigs, const uint8_t *live, size_t n, uint16_t *out, size_t out_stride,
                        uint8_t *owner)
{
    const __m512i zero = _mm512_setzero_si512(), top = _mm512_set1_epi64(PN_NORM_MAX);
    const __m512i dead_score = _mm512_set1_epi64(0xFFFF);
    const size_t total = n_groups * n_probes;
    int64_t nm[PN_SCAN_MAX_PAIRS], nc[PN_SCAN_MAX_PAIRS];
    for (size_t q = 0; q < total; q++) {
        nm[q] = norm ? norm[2 * q] : 1 << PN_NORM_SHIFT;
        nc[q] = 384 * nm[q] + (norm ? norm[2 * q + 1] : 0);
    }
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512i W[8], X[8];
        scan_transpose8(sigs + 8 * k, W);
        scan_transpose8(sigs + 8 * k + 64, X);
        const __m128i lv = _mm_loadu_si128((const __m128i *)(live + k));
        const __mmask8 dead = _mm512_cmpeq_epi64_mask(_mm512_cvtepu8_epi64(lv), zero);
        const __mmask8 dead2 = _mm512_cmpeq_epi64_mask(_mm512_cvtepu8_epi64(_mm_srli_si128(lv, 8)), zero);
        __m512i low = zero, low2 = zero, own = zero, own2 = zero;    /* out_stride 0: over the groups */
        for (size_t g = 0, q = 0; g < n_groups; g++) {
            __m512i best = _mm512_set1_epi64(INT64_MAX), best2 = best;
            for (size_t end = q + n_probes; q < end; q++) {
                const __m512i m = _mm512_set1_epi64(nm[q]), c = _mm512_set1_epi64(nc[q]);
                best = _mm512_min_epi64(best, _mm512_add_epi64(_mm512_mul_epi32(scan_u8(W, probe + 8 * q), m), c));
                best2 = _mm512_min_epi64(best2, _mm512_add_epi64(_mm512_mul_epi32(scan_u8(X, probe + 8 * q), m), c));
            }
            best = _mm512_min_epi64(_mm512_srai_epi64(_mm512_max_epi64(best, zero), PN_NORM_SHIFT), top);
            best2 = _mm512_min_epi64(_mm512_srai_epi64(_mm512_max_epi64(best2, zero), PN_NORM_SHIFT), top);
            if (out_stride) {
                uint16_t *o = out + g * out_stride + k;
                _mm_storeu_si128((__m128i *)o, _mm512_cvtepi64_epi16(_mm512_mask_mov_epi64(best, dead, dead_score)));
                _mm_storeu_si128((__m128i *)(o + 8), _mm512_cvtepi64_epi16(_mm512_mask_mov_epi64(best2, dead2, dead_score)));
            } else if (g == 0) {
                low = best;
                low2 = best2;
            } else {                                         /* strictly lower: the first group on ties */
                const __m512i gv = _mm512_set1_epi64((long long)g);
                const __mmask8 lt = _mm512_cmplt_epi64_mask(best, low), lt2 = _mm512_cmplt_epi64_mask(best2, low2);
                low = _mm512_mask_mov_epi64(low, lt, best);
                low2 = _mm512_mask_mov_epi64(low2, lt2, best2);
                own = _mm512_mask_mov_epi64(own, lt, gv);
                own2 = _mm512_mask_mov_epi64(own2, lt2, gv);
            }
        }
        if (!out_stride) {
            _mm_storeu_si128((__m128i *)(out + k), _mm512_cvtepi64_epi16(_mm512_mask_mov_epi64(low, dead, dead_score)));
            _mm_storeu_si128((__m128i *)(out + k + 8), _mm512_cvtepi64_epi16(_mm512_mask_mov_epi64(low2, dead2, dead_score)));
            if (owner) {
                _mm_storel_epi64((__m128i *)(owner + k), _mm512_cvtepi64_epi8(_mm512_maskz_mov_epi64((__mmask8)~dead, own)));
                _mm_storel_epi64((__m128i *)(owner + k + 8), _mm512_cvtepi64_epi8(_mm512_maskz_mov_epi64((__mmask8)~dead2, own2)));
            }
        }
    }
    if (k < n) scan_groups(probe, n_groups, n_probes, norm, sigs + 8 * k, live + k, n - k, out + k, out_stride,
                           owner ? owner + k : NULL);
}
#endif

void pn_prefilter_scores(const uint64_t *probe_sigs, size_t n_groups, size_t n_probes, const int32_t *norm,
                         const uint64_t *sigs, const uint8_t *live, size_t n, uint16_t *out, size_t out_stride,
                         uint8_t *owner)
{
#if PN_X86
    if (level() >= 3 && n_groups * n_probes <= PN_SCAN_MAX_PAIRS && n_probes <= PN_SCAN_MAX_PROBES) {
        scan_avx512(probe_sigs, n_groups, n_probes, norm, sigs, live, n, out, out_stride, owner);
        return;
    }
#endif
    scan_groups(probe_sigs, n_groups, n_probes, norm, sigs, live, n, out, out_stride, owner);
}

/* ---------------------------------------------------------------- shortlist select */
#define PN_SCORE_BINS 1024

#if PN_X86
/* The collecting pass, 16 scores per compare: blocks without a score <= t (most of them) are
 * skipped at once, the others visit their candidates in index order. Returns where it stopped. */
__attribute__((target("avx2,bmi")))
static size_t select_avx2(const uint16_t *scores, size_t n, size_t k, uint16_t t, size_t *ties_io,
                          size_t *m_io, int64_t *out_idx)
{
    const __m256i tv = _mm256_set1_epi16((short)t);
    size_t ties = *ties_io, m = *m_io, i = 0;
    for (; i + 16 <= n && m < k; i += 16) {
        const __m256i s = _mm256_loadu_si256((const __m256i *)(scores + i));
        const __m256i le = _mm256_cmpeq_epi16(_mm256_min_epu16(s, tv), s);   /* s <= t */
        uint32_t mask = (uint32_t)_mm256_movemask_epi8(le) & 0x55555555u;
        while (mask && m < k) {
            const unsigned j = (unsigned)__builtin_ctz(mask) >> 1;
            mask &= mask - 1;
            const uint16_t v = scores[i + j];
            if (v < t) {
                out_idx[m++] = (int64_t)(i + j);
            } else if (ties) {
                ties--;
                out_idx[m++] = (int64_t)(i + j);
            }
        }
    }
    *ties_io = ties;
    *m_io = m;
    return m < k ? i : n;
}
#endif

size_t pn_select_smallest(const uint16_t *scores, size_t n, size_t k, int64_t *out_idx)
{
    /* four partial histograms (bin PN_SCORE_BINS collects the rest): the scores crowd into a
     * few bins, and increments of one table's same bin would wait on each other */
    uint32_t h4[4][PN_SCORE_BINS + 1];
    memset(h4, 0, sizeof h4);
    size_t i0 = 0;
    for (; i0 + 4 <= n; i0 += 4) {
        const uint16_t s0 = scores[i0], s1 = scores[i0 + 1], s2 = scores[i0 + 2], s3 = scores[i0 + 3];
        h4[0][s0 < PN_SCORE_BINS ? s0 : PN_SCORE_BINS]++;
        h4[1][s1 < PN_SCORE_BINS ? s1 : PN_SCORE_BINS]++;
        h4[2][s2 < PN_SCORE_BINS ? s2 : PN_SCORE_BINS]++;
        h4[3][s3 < PN_SCORE_BINS ? s3 : PN_SCORE_BINS]++;
    }
    for (; i0 < n; i0++) h4[0][scores[i0] < PN_SCORE_BINS ? scores[i0] : PN_SCORE_BINS]++;
    uint32_t hist[PN_SCORE_BINS];
    for (int b = 0; b < PN_SCORE_BINS; b++) hist[b] = h4[0][b] + h4[1][b] + h4[2][b] + h4[3][b];
    /* threshold t: everything below t fits, ties at t fill up to k in index order */
    size_t below = 0;
    int t = 0;
    for (; t < PN_SCORE_BINS; t++) {
        if (below + hist[t] >= k) break;
        below += hist[t];
    }
    size_t ties = t < PN_SCORE_BINS ? k - below : 0;
    size_t m = 0, i = 0;
#if PN_X86
    if (level() >= 2) i = select_avx2(scores, n, k, (uint16_t)t, &ties, &m, out_idx);
#endif
    for (; i < n && m < k; i++) {
        uint16_t s = scores[i];
        if (s < t) {
            out_idx[m++] = (int64_t)i;
        } else if (s == t && ties) {
            ties--;
            out_idx[m++] = (int64_t)i;
        }
    }
    return m;
}

/* ---------------------------------------------------------------- 16x16 shifted match (vein stage) */
PN_INLINE void match16_body(const uint32_t *probe, int max_dx, int max_dy,
                            const uint32_t *records, size_t stride_words, size_t offset_words,
                            const int64_t *idx, size_t n, double n_ref, double *out_hd, int hw)
{
    shifted_probe_t sh;
    build_shifted(probe, 16, max_dx, sh);
    for (size_t k = 0; k < n; k++) {
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        double best = 2.0;
        for (int dy = -max_dy; dy <= max_dy; dy++) {
            for (int dx = -max_dx; dx <= max_dx; dx++) {
                const int start = PN_MAX_SHIFT - dy;
                const uint32_t *a0 = sh[dx + max_dx][0] + start, *a1 = sh[dx + max_dx][1] + start;
                const uint32_t *a2 = sh[dx + max_dx][2] + start, *am = sh[dx + max_dx][3] + start;
                uint64_t d = 0, v = 0;
                for (int j = 0; j < 16; j++) {
                    uint32_t m = am[j] & rec[48 + j] & 0xFFFFu;
                    uint32_t x0 = (a0[j] ^ rec[j]) & m, x1 = (a1[j] ^ rec[16 + j]) & m, x2 = (a2[j] ^ rec[32 + j]) & m;
                    uint32_t ones = x0 ^ x1 ^ x2, twos = (x0 & x1) | (x2 & (x0 ^ x1));
                    d += PC(hw, ones) + 2 * PC(hw, twos);
                    v += PC(hw, m);
                }
                double hd = 0.5;
                if (v) {
                    const double vv = (double)(3 * v);
                    hd = 0.5 - (0.5 - (double)d / vv) * sqrt(vv / n_ref);
                }
                if (hd < best) best = hd;
            }
        }
        out_hd[k] = best;
    }
}

static void match16_portable(const uint32_t *probe, int max_dx, int max_dy, const uint32_t *records,
                             size_t stride_words, size_t offset_words, const int64_t *idx, size_t n,
                             double n_ref, double *out_hd)
{
    match16_body(probe, max_dx, max_dy, records, stride_words, offset_words, idx, n, n_ref, out_hd, 0);
}

#if PN_X86
__attribute__((target("popcnt")))
static void match16_popcnt(const uint32_t *probe, int max_dx, int max_dy, const uint32_t *records,
                           size_t stride_words, size_t offset_words, const int64_t *idx, size_t n,
                           double n_ref, double *out_hd)
{
    match16_body(probe, max_dx, max_dy, records, stride_words, offset_words, idx, n, n_ref, out_hd, 1);
}

/* 16 rows of 16 bits = one register per plane: rows packed from uint32 (masked to 16 bits, so
 * the unsigned-saturating pack is exact), lanes put back in order by a 64-bit permute. */
__attribute__((target("avx2,popcnt"))) PN_INLINE __m256i pack16(const uint32_t *rows, __m256i low16)
{
    __m256i a = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)rows), low16);
    __m256i b = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(rows + 8)), low16);
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
}

__attribute__((target("avx2,popcnt")))
static void match16_avx2(const uint32_t *probe, int max_dx, int max_dy, const uint32_t *records,
                         size_t stride_words, size_t offset_words, const int64_t *idx, size_t n,
                         double n_ref, double *out_hd)
{
    shifted_probe_t sh;
    build_shifted(probe, 16, max_dx, sh);
    const __m256i lut = NIBBLE_POPCOUNT_LUT;
    const __m256i low = _mm256_set1_epi8(0x0F), low16 = _mm256_set1_epi32(0xFFFF);
    const int nx = 2 * max_dx + 1, nshift = nx * (2 * max_dy + 1);
    __m256i ps[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1)][4];
    for (int dy = -max_dy, s = 0; dy <= max_dy; dy++) {
        for (int dx = -max_dx; dx <= max_dx; dx++, s++) {
            for (int p = 0; p < 4; p++) ps[s][p] = pack16(sh[dx + max_dx][p] + PN_MAX_SHIFT - dy, low16);
        }
    }
    int64_t dd[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1) + 4];
    int64_t vv[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1) + 4];
    double hdv[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1) + 4];
    const __m256d half = _mm256_set1_pd(0.5), nr = _mm256_set1_pd(n_ref);
    for (size_t k = 0; k < n; k++) {
        prefetch_ahead(records, idx, k, n, stride_words, offset_words, 256);
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        const __m256i r0 = pack16(rec, low16), r1 = pack16(rec + 16, low16);
        const __m256i r2 = pack16(rec + 32, low16), rm = pack16(rec + 48, low16);
        for (int s = 0; s < nshift; s++) {
            __m256i cd, cv;
            code_counts(ps[s][0], ps[s][1], ps[s][2], ps[s][3],
                        r0, r1, r2, rm,
                        lut, low, &cd, &cv);
            count_totals(cd, cv, dd + s, vv + s);
        }
        normalised_hd(dd, vv, nshift, half, nr, hdv);
        double best = 2.0;
        for (int j = 0; j < nshift; j++) best = hdv[j] < best ? hdv[j] : best;
        out_hd[k] = best;
    }
}
#endif

void pn_match_shifted16(const uint32_t *probe, int max_dx, int max_dy,
                        const uint32_t *records, size_t stride_words, size_t offset_words,
                        const int64_t *idx, size_t n, double n_ref, double *out_hd)
{
#if PN_X86
    if (level() >= 2) {
        match16_avx2(probe, max_dx, max_dy, records, stride_words, offset_words, idx, n, n_ref, out_hd);
        return;
    }
    if (level() >= 1) {
        match16_popcnt(probe, max_dx, max_dy, records, stride_words, offset_words, idx, n, n_ref, out_hd);
        return;
    }
#endif
    match16_portable(probe, max_dx, max_dy, records, stride_words, offset_words, idx, n, n_ref, out_hd);
}

/* ---------------------------------------------------------------- elastic (block-wise) match */
#define PN_MAX_BLOCKS 64

/* Per block, per window shift: V_b - 2*D_b into gain[s][b], (D_b, V_b) into bd/bv. */
PN_INLINE void elastic_body(const uint32_t *probe, int rows, int bh, int bw, int radius,
                            const uint32_t *records, size_t stride_words, size_t offset_words,
                            const int64_t *idx, const int32_t *centre, size_t n, double n_ref,
                            double *out_hd, int32_t *out_valid, int hw)
{
    const int nbx = 32 / bw, nby = rows / bh, nb = nbx * nby;
    const uint32_t bmask = bw >= 32 ? 0xFFFFFFFFu : ((1u << bw) - 1u);
    const int win = 2 * radius + 1;
    for (size_t k = 0; k < n; k++) {
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        const int cdy = centre[k] / 32 - PN_MAX_SHIFT, cdx = centre[k] % 32 - PN_MAX_SHIFT;
        int64_t best_gain[PN_MAX_BLOCKS], best_d[PN_MAX_BLOCKS], best_v[PN_MAX_BLOCKS];
        for (int b = 0; b < nb; b++) { best_gain[b] = INT64_MIN; best_d[b] = 0; best_v[b] = 0; }
        for (int ey = 0; ey < win; ey++) {
            const int dy = cdy + ey - radius;
            for (int ex = 0; ex < win; ex++) {
                const int dx = cdx + ex - radius;
                int64_t d[PN_MAX_BLOCKS], v[PN_MAX_BLOCKS];
                for (int b = 0; b < nb; b++) { d[b] = 0; v[b] = 0; }
                /* record row j meets probe row j - dy, probe cell x meets record cell x + dx */
                for (int j = 0; j < rows; j++) {
                    const int y = j - dy;
                    if (y < 0 || y >= rows) continue;
                    const uint32_t m = shift_row(probe[3 * rows + y], dx) & rec[3 * rows + j];
                    if (!m) continue;
                    const uint32_t x0 = (shift_row(probe[y], dx) ^ rec[j]) & m;
                    const uint32_t x1 = (shift_row(probe[rows + y], dx) ^ rec[rows + j]) & m;
                    const uint32_t x2 = (shift_row(probe[2 * rows + y], dx) ^ rec[2 * rows + j]) & m;
                    const uint32_t ones = x0 ^ x1 ^ x2, twos = (x0 & x1) | (x2 & (x0 ^ x1));
                    const int row_block = (j / bh) * nbx;
                    for (int bx = 0; bx < nbx; bx++) {
                        const uint32_t sel = bmask << (bx * bw);
                        d[row_block + bx] += (int64_t)(PC(hw, ones & sel) + 2 * PC(hw, twos & sel));
                        v[row_block + bx] += (int64_t)(3 * PC(hw, m & sel));
                    }
                }
                for (int b = 0; b < nb; b++) {
                    const int64_t g = v[b] - 2 * d[b];
                    if (g > best_gain[b]) { best_gain[b] = g; best_d[b] = d[b]; best_v[b] = v[b]; }
                }
            }
        }
        int64_t dsum = 0, vsum = 0;
        for (int b = 0; b < nb; b++) { dsum += best_d[b]; vsum += best_v[b]; }
        double hd = 0.5;
        if (vsum) {
            const double vv = (double)vsum;
            hd = 0.5 - (0.5 - (double)dsum / vv) * sqrt(vv / n_ref);
        }
        out_hd[k] = hd;
        if (out_valid) out_valid[k] = (int32_t)vsum;
    }
}

static void elastic_portable(const uint32_t *probe, int rows, int bh, int bw, int radius,
                             const uint32_t *records, size_t stride_words, size_t offset_words,
                             const int64_t *idx, const int32_t *centre, size_t n, double n_ref,
                             double *out_hd, int32_t *out_valid)
{
    elastic_body(probe, rows, bh, bw, radius, records, stride_words, offset_words, idx, centre, n,
                 n_ref, out_hd, out_valid, 0);
}

#if PN_X86
__attribute__((target("popcnt")))
static void elastic_popcnt(const uint32_t *probe, int rows, int bh, int bw, int radius,
                           const uint32_t *records, size_t stride_words, size_t offset_words,
                           const int64_t *idx, const int32_t *centre, size_t n, double n_ref,
                           double *out_hd, int32_t *out_valid)
{
    elastic_body(probe, rows, bh, bw, radius, records, stride_words, offset_words, idx, centre, n,
                 n_ref, out_hd, out_valid, 1);
}
#endif

#if PN_X86
/* AVX2, blocks of 8x8 cells (rows a multiple of 8): one vector = 8 code rows = one block row;
 * byte b of a row word is column block b. Byte-wise popcounts of the differing bits (ones + 2
 * twos, <= 24 per byte) and of the joint mask are summed over the 8 rows as bytes (<= 192), so
 * each 8-row chunk yields the (D, V) of its 4 blocks; the per-block choice (V - 2D, strictly
 * greater wins, same order) and the final sums equal the scalar path's. */
__attribute__((target("avx2,popcnt"))) PN_INLINE __m128i rowsum8(__m256i x)
{
    x = _mm256_add_epi8(x, _mm256_srli_epi64(x, 32));
    x = _mm256_add_epi8(x, _mm256_shuffle_epi32(x, 0x4E));
    return _mm_add_epi8(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1)); /* low dword */
}

__attribute__((target("avx2,popcnt")))
static void elastic_avx2(const uint32_t *probe, int rows, int radius,
                         const uint32_t *records, size_t stride_words, size_t offset_words,
                         const int64_t *idx, const int32_t *centre, size_t n, double n_ref,
                         double *out_hd, int32_t *out_valid)
{
    shifted_probe_t sh;
    build_shifted(probe, rows, PN_MAX_SHIFT, sh);
    const __m256i lut = NIBBLE_POPCOUNT_LUT;
    const __m256i low = _mm256_set1_epi8(0x0F);
    const int chunks = rows / 8, win = 2 * radius + 1;
    for (size_t k = 0; k < n; k++) {
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        const int cdy = centre[k] / 32 - PN_MAX_SHIFT, cdx = centre[k] % 32 - PN_MAX_SHIFT;
        __m128i bg[PN_MAX_ROWS / 8], bd[PN_MAX_ROWS / 8], bv[PN_MAX_ROWS / 8];
        for (int c = 0; c < chunks; c++) {
            bg[c] = _mm_set1_epi32(INT32_MIN);
            bd[c] = _mm_setzero_si128();
            bv[c] = _mm_setzero_si128();
        }
        for (int ey = 0; ey < win; ey++) {
            const int dy = cdy + ey - radius, start = PN_MAX_SHIFT - dy;
            for (int ex = 0; ex < win; ex++) {
                const int dx = cdx + ex - radius;
                const uint32_t *a0 = sh[dx + PN_MAX_SHIFT][0] + start;
                const uint32_t *a1 = sh[dx + PN_MAX_SHIFT][1] + start;
                const uint32_t *a2 = sh[dx + PN_MAX_SHIFT][2] + start;
                const uint32_t *am = sh[dx + PN_MAX_SHIFT][3] + start;
                for (int c = 0; c < chunks; c++) {
                    const int o = 8 * c;
                    __m256i cd, cv;
                    code_counts(ld256(a0 + o), ld256(a1 + o), ld256(a2 + o), ld256(am + o),
                                ld256(rec + o), ld256(rec + rows + o), ld256(rec + 2 * rows + o), ld256(rec + 3 * rows + o),
                                lut, low, &cd, &cv);
                    __m128i d = _mm_cvtepu8_epi32(rowsum8(cd));
                    __m128i v = _mm_mullo_epi32(_mm_cvtepu8_epi32(rowsum8(cv)), _mm_set1_epi32(3));
                    __m128i g = _mm_sub_epi32(v, _mm_add_epi32(d, d));
                    __m128i better = _mm_cmpgt_epi32(g, bg[c]);
                    bg[c] = _mm_blendv_epi8(bg[c], g, better);
                    bd[c] = _mm_blendv_epi8(bd[c], d, better);
                    bv[c] = _mm_blendv_epi8(bv[c], v, better);
                }
            }
        }
        __m128i sd = _mm_setzero_si128(), sv = _mm_setzero_si128();
        for (int c = 0; c < chunks; c++) {
            sd = _mm_add_epi32(sd, bd[c]);
            sv = _mm_add_epi32(sv, bv[c]);
        }
        sd = _mm_add_epi32(sd, _mm_shuffle_epi32(sd, 0x4E));
        sd = _mm_add_epi32(sd, _mm_shuffle_epi32(sd, 0xB1));
        sv = _mm_add_epi32(sv, _mm_shuffle_epi32(sv, 0x4E));
        sv = _mm_add_epi32(sv, _mm_shuffle_epi32(sv, 0xB1));
        const int64_t dsum = _mm_cvtsi128_si32(sd), vsum = _mm_cvtsi128_si32(sv);
        double hd = 0.5;
        if (vsum) {
            const double vv = (double)vsum;
            hd = 0.5 - (0.5 - (double)dsum / vv) * sqrt(vv / n_ref);
        }
        out_hd[k] = hd;
        if (out_valid) out_valid[k] = (int32_t)vsum;
    }
}
#endif

#if PN_X86
/* 16 rows of 32 cells (row r = bytes 4r..4r+3, byte b = column block b) made block-major: block
 * (r / 8, b) = 64-bit lane 4 (r / 8) + b, byte r % 8 of it, so vpopcntq counts a whole 8x8 block.
 * The same permutation of probe and record leaves every XOR, AND and count unchanged. */
__attribute__((target(PN_AVX512))) PN_INLINE __m512i blocks8x8(__m512i x)
{
    const __m512i to = _mm512_set_epi8(63, 59, 55, 51, 47, 43, 39, 35, 62, 58, 54, 50, 46, 42, 38, 34,
                                       61, 57, 53, 49, 45, 41, 37, 33, 60, 56, 52, 48, 44, 40, 36, 32,
                                       31, 27, 23, 19, 15, 11, 7, 3, 30, 26, 22, 18, 14, 10, 6, 2,
                                       29, 25, 21, 17, 13, 9, 5, 1, 28, 24, 20, 16, 12, 8, 4, 0);
    return _mm512_permutexvar_epi8(to, x);
}

/* AVX-512, blocks of 8x8 cells (rows a multiple of 16): per 16-row register and window shift
 * the probe's rows are made block-major (blocks8x8; the record's once), each block's D, cells
 * and g = V - 2D are one 64-bit lane, the best kept per lane (strictly greater: first in order).
 * The same integers as the scalar path. */
__attribute__((target(PN_AVX512)))
static void elastic_avx512(const uint32_t *probe, int rows, int radius,
                           const uint32_t *records, size_t stride_words, size_t offset_words,
                           const int64_t *idx, const int32_t *centre, size_t n, double n_ref,
                           double *out_hd, int32_t *out_valid)
{
    shifted_probe_t sh;
    build_shifted(probe, rows, PN_MAX_SHIFT, sh);
    const int regs = rows / 16, win = 2 * radius + 1;
    for (size_t k = 0; k < n; k++) {
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        const int cdy = centre[k] / 32 - PN_MAX_SHIFT, cdx = centre[k] % 32 - PN_MAX_SHIFT;
        __m512i r[PN_MAX_ROWS / 16][4], bg[PN_MAX_ROWS / 16], bd[PN_MAX_ROWS / 16];
        for (int c = 0; c < regs; c++) {
            for (int p = 0; p < 4; p++) r[c][p] = blocks8x8(_mm512_loadu_si512((const void *)(rec + p * rows + 16 * c)));
            bg[c] = _mm512_set1_epi64(INT64_MIN);
            bd[c] = _mm512_setzero_si512();
        }
        for (int ey = 0; ey < win; ey++) {
            const int dy = cdy + ey - radius, start = PN_MAX_SHIFT - dy;
            for (int ex = 0; ex < win; ex++) {
                const uint32_t *a = sh[cdx + ex - radius + PN_MAX_SHIFT][0] + start;
                for (int c = 0; c < regs; c++) {
                    const int o = 16 * c;
                    const __m512i m = _mm512_and_si512(blocks8x8(_mm512_loadu_si512((const void *)(a + 3 * PN_PAD_ROWS + o))), r[c][3]);
                    __m512i x[3];
                    for (int p = 0; p < 3; p++) {
                        x[p] = _mm512_ternarylogic_epi64(blocks8x8(_mm512_loadu_si512((const void *)(a + p * PN_PAD_ROWS + o))),
                                                         r[c][p], m, 0x28);
                    }
                    const __m512i twos = _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(x[0], x[1], x[2], 0xE8));
                    const __m512i d = _mm512_add_epi64(_mm512_popcnt_epi64(_mm512_ternarylogic_epi64(x[0], x[1], x[2], 0x96)),
                                                       _mm512_add_epi64(twos, twos));
                    const __m512i cells = _mm512_popcnt_epi64(m);
                    const __m512i g = _mm512_sub_epi64(_mm512_add_epi64(cells, _mm512_add_epi64(cells, cells)), _mm512_add_epi64(d, d));
                    const __mmask8 up = _mm512_cmpgt_epi64_mask(g, bg[c]);
                    bg[c] = _mm512_mask_mov_epi64(bg[c], up, g);
                    bd[c] = _mm512_mask_mov_epi64(bd[c], up, d);
                }
            }
        }
        int64_t dsum = 0, vsum = 0;
        for (int c = 0; c < regs; c++) {
            dsum += _mm512_reduce_add_epi64(bd[c]);
            vsum += _mm512_reduce_add_epi64(_mm512_add_epi64(bg[c], _mm512_add_epi64(bd[c], bd[c])));   /* V = g + 2D */
        }
        double hd = 0.5;
        if (vsum) {
            const double vv = (double)vsum;
            hd = 0.5 - (0.5 - (double)dsum / vv) * sqrt(vv / n_ref);
        }
        out_hd[k] = hd;
        if (out_valid) out_valid[k] = (int32_t)vsum;
    }
}
#endif

void pn_match_elastic(const uint32_t *probe, int rows, int bh, int bw, int radius,
                      const uint32_t *records, size_t stride_words, size_t offset_words,
                      const int64_t *idx, const int32_t *centre, size_t n, double n_ref,
                      double *out_hd, int32_t *out_valid)
{
#if PN_X86
    if (level() >= 3 && bh == 8 && bw == 8 && rows % 16 == 0) {
        elastic_avx512(probe, rows, radius, records, stride_words, offset_words, idx, centre, n, n_ref,
                       out_hd, out_valid);
        return;
    }
    if (level() >= 2 && bh == 8 && bw == 8 && rows % 8 == 0) {
        elastic_avx2(probe, rows, radius, records, stride_words, offset_words, idx, centre, n, n_ref,
                     out_hd, out_valid);
        return;
    }
    if (level() >= 1) {
        elastic_popcnt(probe, rows, bh, bw, radius, records, stride_words, offset_words, idx, centre,
                       n, n_ref, out_hd, out_valid);
        return;
    }
#endif
    elastic_portable(probe, rows, bh, bw, radius, records, stride_words, offset_words, idx, centre,
                     n, n_ref, out_hd, out_valid);
}

/* ---------------------------------------------------------------- 16x16 block-wise match (vein stage) */
/* Row group q (rows 4q..4q+3) of a plane as one 64-bit word, 16 bits per row (bits 16-31 dropped):
 * block (q, c) is then the word's bits 4c..4c+3 of every 16-bit field. */
static inline uint64_t group16(const uint32_t *rows)
{
    return (uint64_t)(rows[0] & 0xFFFFu) | ((uint64_t)(rows[1] & 0xFFFFu) << 16)
         | ((uint64_t)(rows[2] & 0xFFFFu) << 32) | ((uint64_t)(rows[3] & 0xFFFFu) << 48);
}

static inline double norm_hd(int64_t d, int64_t v, double n_ref)
{
    if (!v) return 0.5;
    const double vv = (double)v;
    return 0.5 - (0.5 - (double)d / vv) * sqrt(vv / n_ref);
}

PN_INLINE void elastic16_body(const uint32_t *probe, int radius, const uint32_t *records,
                              size_t stride_words, size_t offset_words, const int64_t *idx, size_t n,
                              double n_ref, double *out_hd, int hw)
{
    shifted_probe_t sh;
    build_shifted(probe, 16, radius, sh);
    for (size_t k = 0; k < n; k++) {
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        uint64_t r[4][4];
        for (int p = 0; p < 4; p++) {
            for (int q = 0; q < 4; q++) r[p][q] = group16(rec + 16 * p + 4 * q);
        }
        int best_g[16], best_d[16], best_v[16];
        for (int b = 0; b < 16; b++) best_g[b] = INT32_MIN;
        for (int dy = -radius; dy <= radius; dy++) {
            for (int dx = -radius; dx <= radius; dx++) {
                const int start = PN_MAX_SHIFT - dy;
                for (int q = 0; q < 4; q++) {
                    const uint64_t m = group16(sh[dx + radius][3] + start + 4 * q) & r[3][q];
                    const uint64_t x0 = (group16(sh[dx + radius][0] + start + 4 * q) ^ r[0][q]) & m;
                    const uint64_t x1 = (group16(sh[dx + radius][1] + start + 4 * q) ^ r[1][q]) & m;
                    const uint64_t x2 = (group16(sh[dx + radius][2] + start + 4 * q) ^ r[2][q]) & m;
                    for (int c = 0; c < 4; c++) {
                        const uint64_t sel = 0x000F000F000F000FULL << (4 * c);
                        const int d = (int)(PC(hw, x0 & sel) + PC(hw, x1 & sel) + PC(hw, x2 & sel));
                        const int v = 3 * (int)PC(hw, m & sel);
                        const int g = v - 2 * d, b = 4 * q + c;
                        if (g > best_g[b]) {
                            best_g[b] = g;
                            best_d[b] = d;
                            best_v[b] = v;
                        }
                    }
                }
            }
        }
        int64_t dsum = 0, vsum = 0;
        for (int b = 0; b < 16; b++) {
            dsum += best_d[b];
            vsum += best_v[b];
        }
        out_hd[k] = norm_hd(dsum, vsum, n_ref);
    }
}

static void elastic16_portable(const uint32_t *probe, int radius, const uint32_t *records, size_t stride_words,
                               size_t offset_words, const int64_t *idx, size_t n, double n_ref, double *out_hd)
{
    elastic16_body(probe, radius, records, stride_words, offset_words, idx, n, n_ref, out_hd, 0);
}

#if PN_X86
__attribute__((target("popcnt")))
static void elastic16_popcnt(const uint32_t *probe, int radius, const uint32_t *records, size_t stride_words,
                             size_t offset_words, const int64_t *idx, size_t n, double n_ref, double *out_hd)
{
    elastic16_body(probe, radius, records, stride_words, offset_words, idx, n, n_ref, out_hd, 1);
}

/* Sum of the 4 rows of each row group, per byte: byte 0 (1) of every 64-bit lane gets the sum of
 * bytes 0, 2, 4, 6 (1, 3, 5, 7) (wrapping int8 adds: exact while the sums stay in int8). */
__attribute__((target("avx2"))) PN_INLINE __m256i rows4(__m256i x)
{
    x = _mm256_add_epi8(x, _mm256_srli_epi64(x, 32));
    return _mm256_add_epi8(x, _mm256_srli_epi64(x, 16));
}

/* AVX2: one register per plane (16 rows x 16 bits, row j = 16-bit element j, so lane q of 64 bits
 * = row group q); per shift the nibble-table counts of the low and high nibble of every byte are
 * the per-row counts of column blocks (0, 2) and (1, 3); rows4 sums them per row group. Every
 * block's g = V - 2D, D (int8) and the best so far (strictly greater: first in order) are kept
 * in bytes 0-1 of each lane of two registers (low / high nibbles). */
__attribute__((target("avx2,popcnt")))
static void elastic16_avx2(const uint32_t *probe, int radius, const uint32_t *records, size_t stride_words,
                           size_t offset_words, const int64_t *idx, size_t n, double n_ref, double *out_hd)
{
    shifted_probe_t sh;
    build_shifted(probe, 16, radius, sh);
    const __m256i lut = NIBBLE_POPCOUNT_LUT;
    const __m256i low = _mm256_set1_epi8(0x0F), low16 = _mm256_set1_epi32(0xFFFF);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i keep = _mm256_set1_epi64x(0xFFFF);          /* bytes 0-1 of each lane hold blocks */
    const int nshift = (2 * radius + 1) * (2 * radius + 1);
    __m256i ps[(2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1)][4];
    for (int dy = -radius, s = 0; dy <= radius; dy++) {
        for (int dx = -radius; dx <= radius; dx++, s++) {
            for (int p = 0; p < 4; p++) ps[s][p] = pack16(sh[dx + radius][p] + PN_MAX_SHIFT - dy, low16);
        }
    }
    for (size_t k = 0; k < n; k++) {
        prefetch_ahead(records, idx, k, n, stride_words, offset_words, 256);
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        const __m256i r0 = pack16(rec, low16), r1 = pack16(rec + 16, low16);
        const __m256i r2 = pack16(rec + 32, low16), rm = pack16(rec + 48, low16);
        __m256i bg_lo = _mm256_set1_epi8(-128), bg_hi = bg_lo, bd_lo = zero, bd_hi = zero;
        for (int s = 0; s < nshift; s++) {
            const __m256i m = _mm256_and_si256(ps[s][3], rm);
            const __m256i x0 = _mm256_and_si256(_mm256_xor_si256(ps[s][0], r0), m);
            const __m256i x1 = _mm256_and_si256(_mm256_xor_si256(ps[s][1], r1), m);
            const __m256i x2 = _mm256_and_si256(_mm256_xor_si256(ps[s][2], r2), m);
            const __m256i x01 = _mm256_xor_si256(x0, x1);
            const __m256i ones = _mm256_xor_si256(x01, x2);
            const __m256i twos = _mm256_or_si256(_mm256_and_si256(x0, x1), _mm256_and_si256(x2, x01));
            const __m256i o_hi = _mm256_and_si256(_mm256_srli_epi16(ones, 4), low);
            const __m256i t_hi = _mm256_and_si256(_mm256_srli_epi16(twos, 4), low);
            const __m256i m_hi = _mm256_and_si256(_mm256_srli_epi16(m, 4), low);
            /* per row and nibble: D = ones + 2 twos (<= 12), V = 3 cells (<= 12) */
            const __m256i t_l = _mm256_shuffle_epi8(lut, _mm256_and_si256(twos, low));
            const __m256i t_h = _mm256_shuffle_epi8(lut, t_hi);
            const __m256i d_l = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(ones, low)), _mm256_add_epi8(t_l, t_l));
            const __m256i d_h = _mm256_add_epi8(_mm256_shuffle_epi8(lut, o_hi), _mm256_add_epi8(t_h, t_h));
            const __m256i c_l = _mm256_shuffle_epi8(lut, _mm256_and_si256(m, low));
            const __m256i c_h = _mm256_shuffle_epi8(lut, m_hi);
            /* g = 3 cells - 2 D per row (>= -24), summed over 4 rows (-96..48): int8 */
            const __m256i g_l = rows4(_mm256_sub_epi8(_mm256_add_epi8(c_l, _mm256_add_epi8(c_l, c_l)), _mm256_add_epi8(d_l, d_l)));
            const __m256i g_h = rows4(_mm256_sub_epi8(_mm256_add_epi8(c_h, _mm256_add_epi8(c_h, c_h)), _mm256_add_epi8(d_h, d_h)));
            const __m256i up_l = _mm256_cmpgt_epi8(g_l, bg_lo), up_h = _mm256_cmpgt_epi8(g_h, bg_hi);
            bg_lo = _mm256_blendv_epi8(bg_lo, g_l, up_l);
            bg_hi = _mm256_blendv_epi8(bg_hi, g_h, up_h);
            bd_lo = _mm256_blendv_epi8(bd_lo, rows4(d_l), up_l);
            bd_hi = _mm256_blendv_epi8(bd_hi, rows4(d_h), up_h);
        }
        /* D per block (0..48) and V = g + 2D (0..48) in bytes 0-1 of each lane: sum them */
        const __m256i d = _mm256_and_si256(bd_lo, keep);
        const __m256i dh = _mm256_and_si256(bd_hi, keep);
        const __m256i v = _mm256_and_si256(_mm256_add_epi8(bg_lo, _mm256_add_epi8(bd_lo, bd_lo)), keep);
        const __m256i vh = _mm256_and_si256(_mm256_add_epi8(bg_hi, _mm256_add_epi8(bd_hi, bd_hi)), keep);
        const __m256i ds = _mm256_sad_epu8(_mm256_add_epi8(d, dh), zero);      /* <= 8 x 96 per lane: fits */
        const __m256i vs = _mm256_sad_epu8(_mm256_add_epi8(v, vh), zero);
        int64_t dl[4], vl[4];
        _mm256_storeu_si256((__m256i *)dl, ds);
        _mm256_storeu_si256((__m256i *)vl, vs);
        out_hd[k] = norm_hd(dl[0] + dl[1] + dl[2] + dl[3], vl[0] + vl[1] + vl[2] + vl[3], n_ref);
    }
}
#endif

#if PN_X86
/* A plane of 16 rows x 16 bits (row j = 16-bit element j, row group q = 64-bit lane q) made
 * block-major: in every lane the 4x4 nibbles (row r, column block c) are transposed by two delta
 * swaps of the nibble index bits, so 16-bit element 4q + c holds block (q, c)'s 16 cells. The
 * same permutation of probe and record leaves every XOR, AND and count unchanged. */
__attribute__((target(PN_AVX512))) PN_INLINE __m256i blocks16(__m256i x)
{
    __m256i t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 12)), _mm256_set1_epi64x(0x0000F0F00000F0F0LL));
    x = _mm256_ternarylogic_epi64(x, t, _mm256_slli_epi64(t, 12), 0x96);
    t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 24)), _mm256_set1_epi64x(0x00000000FF00FF00LL));
    return _mm256_ternarylogic_epi64(x, t, _mm256_slli_epi64(t, 24), 0x96);
}

__attribute__((target(PN_AVX512))) PN_INLINE __m256i pack16_512(const uint32_t *rows)
{
    return _mm512_cvtepi32_epi16(_mm512_loadu_si512((const void *)rows));   /* low 16 bits of each row */
}

/* AVX-512: block-major planes (blocks16), so a block's counts are one vpopcntw each; two shifts
 * per register (the low half runs the first half of the shifts in order, the high half the rest,
 * padded with a repeat of the last shift that never wins), every block's g = V - 2D and D kept in
 * 16-bit elements (strictly greater: first in order), and the halves merged at the end with the
 * low half winning ties (its shifts come first). */
__attribute__((target(PN_AVX512)))
static void elastic16_avx512(const uint32_t *probe, int radius, const uint32_t *records, size_t stride_words,
                             size_t offset_words, const int64_t *idx, size_t n, double n_ref, double *out_hd)
{
    shifted_probe_t sh;
    build_shifted(probe, 16, radius, sh);
    const int win = 2 * radius + 1, nshift = win * win, half = (nshift + 1) / 2;
    __m512i pz[((2 * PN_MAX_SHIFT + 1) * (2 * PN_MAX_SHIFT + 1) + 1) / 2][4];
    for (int j = 0; j < half; j++) {
        const int s = half + j < nshift ? half + j : nshift - 1;        /* shift s = (dy + radius) * win + dx + radius */
        for (int p = 0; p < 4; p++) {
            const __m256i lo = blocks16(pack16_512(sh[j % win][p] + PN_MAX_SHIFT - (j / win - radius)));
            const __m256i hi = blocks16(pack16_512(sh[s % win][p] + PN_MAX_SHIFT - (s / win - radius)));
            pz[j][p] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        }
    }
    const __m512i floor16 = _mm512_set1_epi16(INT16_MIN);
    for (size_t k = 0; k < n; k++) {
        prefetch_ahead(records, idx, k, n, stride_words, offset_words, 256);
        const uint32_t *rec = records + (size_t)idx[k] * stride_words + offset_words;
        const __m512i r0 = _mm512_broadcast_i64x4(blocks16(pack16_512(rec)));
        const __m512i r1 = _mm512_broadcast_i64x4(blocks16(pack16_512(rec + 16)));
        const __m512i r2 = _mm512_broadcast_i64x4(blocks16(pack16_512(rec + 32)));
        const __m512i rm = _mm512_broadcast_i64x4(blocks16(pack16_512(rec + 48)));
        __m512i bg = floor16, bd = _mm512_setzero_si512();
        for (int j = 0; j < half; j++) {
            const __m512i m = _mm512_and_si512(pz[j][3], rm);
            const __m512i x0 = _mm512_ternarylogic_epi64(pz[j][0], r0, m, 0x28);     /* (a ^ b) & c */
            const __m512i x1 = _mm512_ternarylogic_epi64(pz[j][1], r1, m, 0x28);
            const __m512i x2 = _mm512_ternarylogic_epi64(pz[j][2], r2, m, 0x28);
            const __m512i twos = _mm512_popcnt_epi16(_mm512_ternarylogic_epi64(x0, x1, x2, 0xE8));
            const __m512i d = _mm512_add_epi16(_mm512_popcnt_epi16(_mm512_ternarylogic_epi64(x0, x1, x2, 0x96)),
                                               _mm512_add_epi16(twos, twos));
            const __m512i c = _mm512_popcnt_epi16(m);
            /* g = 3 cells - 2 D (-96..48) */
            const __m512i g = _mm512_sub_epi16(_mm512_add_epi16(c, _mm512_add_epi16(c, c)), _mm512_add_epi16(d, d));
            const __mmask32 up = _mm512_cmpgt_epi16_mask(g, bg);
            bg = _mm512_mask_mov_epi16(bg, up, g);
            bd = _mm512_mask_mov_epi16(bd, up, d);
        }
        const __m256i g_lo = _mm512_castsi512_si256(bg), g_hi = _mm512_extracti64x4_epi64(bg, 1);
        const __mmask16 later = _mm256_cmpgt_epi16_mask(g_hi, g_lo);
        const __m256i g = _mm256_mask_mov_epi16(g_lo, later, g_hi);
        const __m256i d = _mm256_mask_mov_epi16(_mm512_castsi512_si256(bd), later, _mm512_extracti64x4_epi64(bd, 1));
        const __m256i v = _mm256_add_epi16(g, _mm256_add_epi16(d, d));                 /* V = g + 2D (0..48) */
        const __m256i ones = _mm256_set1_epi16(1);
        const __m256i dsum = _mm256_madd_epi16(d, ones), vsum = _mm256_madd_epi16(v, ones);
        int32_t dl[8], vl[8];
        _mm256_storeu_si256((__m256i *)dl, dsum);
        _mm256_storeu_si256((__m256i *)vl, vsum);
        int64_t dt = 0, vt = 0;
        for (int i = 0; i < 8; i++) {
            dt += dl[i];
            vt += vl[i];
        }
        out_hd[k] = norm_hd(dt, vt, n_ref);
    }
}
#endif

void pn_match_elastic16(const uint32_t *probe, int radius, const uint32_t *records, size_t stride_words,
                        size_t offset_words, const int64_t *idx, size_t n, double n_ref, double *out_hd)
{
#if PN_X86
    if (level() >= 3) {
        elastic16_avx512(probe, radius, records, stride_words, offset_words, idx, n, n_ref, out_hd);
        return;
    }
    if (level() >= 2) {
        elastic16_avx2(probe, radius, records, stride_words, offset_words, idx, n, n_ref, out_hd);
        return;
    }
    if (level() >= 1) {
        elastic16_popcnt(probe, radius, records, stride_words, offset_words, idx, n, n_ref, out_hd);
        return;
    }
#endif
    elastic16_portable(probe, radius, records, stride_words, offset_words, idx, n, n_ref, out_hd);
}
