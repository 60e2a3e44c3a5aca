/* Batched X25519 with one scalar for many points, 8 points at a time with AVX-512 IFMA.
 *
 * Part of fedrec (fedrec/psi/x25519_ifma.py builds and loads it; the pure fallback is libsodium's
 * crypto_scalarmult_curve25519). Computes exactly RFC 7748's X25519(k, u) for every u of a batch: the
 * Montgomery ladder of RFC 7748 section 5, with 8 independent ladders in the 8 64-bit lanes of a zmm
 * register. All lanes use the same scalar, so they take the same (constant-time, masked) swaps.
 *
 * Field elements of GF(2^255 - 19) are 5 limbs of radix 2^51, one __m512i per limb (8 lanes). IFMA
 * (vpmadd52luq / vpmadd52huq) multiplies the low 52 bits of two lanes and adds the low or high 52 bits of
 * the 104-bit product, so every multiplication input must have limbs < 2^52. Invariants (checked by the
 * bounds in the comments, and by tests against libsodium on random and edge-case inputs):
 *   - fe_mul/fe_sqr output ("reduced"): limbs < 2^51 + 2^17;
 *   - fe_add/fe_sub output, after fe_carry: limbs < 2^51 + 2^6;
 *   - inputs of fe_mul/fe_sqr: reduced or carried, so < 2^52.
 * A product a_i b_j = lo + hi 2^52 = lo + (2 hi) 2^51, so the high halves of column k are added, doubled,
 * to column k + 1; columns 5..9 fold into 0..4 times 19 (2^255 = 19 mod p).
 *
 * Secret-independence: the scalar decides the swaps; they are done with masks, never with branches or
 * scalar-dependent memory addresses. The only data-dependent branch is the final check whether an
 * output is zero (the point had small order), which depends on the public input point only.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define M51 ((uint64_t)0x7ffffffffffffULL)

/* Runtime check (compiled for the baseline ISA, so it runs on any x86-64). */
int fedrec_x25519_ifma_supported(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512ifma");
#else
    return 0;
#endif
}

int fedrec_x25519_ifma_version(void) { return 1; }

/* ------------------------------------------------------------------ scalar helpers (one lane) */
static void load_limbs(uint64_t l[5], const uint8_t s[32]) {
    uint64_t w[4];
    memcpy(w, s, 32); /* x86-64 is little-endian */
    l[0] = w[0] & M51;
    l[1] = ((w[0] >> 51) | (w[1] << 13)) & M51;
    l[2] = ((w[1] >> 38) | (w[2] << 26)) & M51;
    l[3] = ((w[2] >> 25) | (w[3] << 39)) & M51;
    l[4] = (w[3] >> 12) & M51; /* bit 255 dropped, as RFC 7748 says */
}

/* Canonical little-endian encoding of limbs < 2^52 (fully reduced mod p). */
static void store_limbs(uint8_t s[32], const uint64_t in[5]) {
    uint64_t h[5], q;
    int i;
    memcpy(h, in, sizeof h);
    for (int round = 0; round < 2; round++) {
        for (i = 0; i < 4; i++) {
            h[i + 1] += h[i] >> 51;
            h[i] &= M51;
        }
        h[0] += 19 * (h[4] >> 51);
        h[4] &= M51;
    }
    /* now h < 2^255 (limbs < 2^51 except h[0] < 2^51 + 19 at most once more): subtract p if h >= p */
    q = (h[0] + 19) >> 51;
    for (i = 1; i < 5; i++) q = (h[i] + q) >> 51;
    h[0] += 19 * q;
    for (i = 0; i < 4; i++) {
        h[i + 1] += h[i] >> 51;
        h[i] &= M51;
    }
    h[4] &= M51;
    uint64_t w[4];
    w[0] = h[0] | (h[1] << 51);
    w[1] = (h[1] >> 13) | (h[2] << 38);
    w[2] = (h[2] >> 26) | (h[3] << 25);
    w[3] = (h[3] >> 39) | (h[4] << 12);
    memcpy(s, w, 32);
}

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512ifma")
#include <immintrin.h>

typedef __m512i vec;
typedef struct {
    vec l[5];
} fe;

#define SET1(x) _mm512_set1_epi64((long long)(x))

/* parallel carry: limbs < 2^63 in; out: limbs < 2^51 + 19 * 2^12 (< 2^51 + 2^17), or < 2^51 + 2^6
 * when the input limbs are < 2^53 */
static inline void fe_carry(fe *r) {
    const vec m = SET1(M51);
    vec c0 = _mm512_srli_epi64(r->l[0], 51), c1 = _mm512_srli_epi64(r->l[1], 51);
    vec c2 = _mm512_srli_epi64(r->l[2], 51), c3 = _mm512_srli_epi64(r->l[3], 51);
    vec c4 = _mm512_srli_epi64(r->l[4], 51);
    r->l[0] = _mm512_madd52lo_epu64(_mm512_and_si512(r->l[0], m), c4, SET1(19));
    r->l[1] = _mm512_add_epi64(_mm512_and_si512(r->l[1], m), c0);
    r->l[2] = _mm512_add_epi64(_mm512_and_si512(r->l[2], m), c1);
    r->l[3] = _mm512_add_epi64(_mm512_and_si512(r->l[3], m), c2);
    r->l[4] = _mm512_add_epi64(_mm512_and_si512(r->l[4], m), c3);
}

static inline void fe_add(fe *r, const fe *a, const fe *b) { /* carried */
    for (int i = 0; i < 5; i++) r->l[i] = _mm512_add_epi64(a->l[i], b->l[i]);
    fe_carry(r);
}

/* a - b + 2p; b limbs must be < 2^52 - 38 (reduced or carried) */
static inline void fe_sub(fe *r, const fe *a, const fe *b) { /* carried */
    r->l[0] = _mm512_sub_epi64(_mm512_add_epi64(a->l[0], SET1(2 * (M51 - 18))), b->l[0]);
    for (int i = 1; i < 5; i++) r->l[i] = _mm512_sub_epi64(_mm512_add_epi64(a->l[i], SET1(2 * M51)), b->l[i]);
    fe_carry(r);
}

/* columns c[0..9] (c[k] < 2^58) -> reduced r */
static inline void fe_fold(fe *r, vec c[10]) {
    const vec n19 = SET1(19);
    for (int k = 0; k < 5; k++) r->l[k] = _mm512_add_epi64(c[k], _mm512_mullo_epi64(c[k + 5], n19));
    fe_carry(r); /* r limbs < 2^58 + 19 * 2^58 < 2^63 before the carry */
}

static inline void fe_mul(fe *r, const fe *a, const fe *b) {
    const vec z = _mm512_setzero_si512();
    vec lo[9], hi[9], c[10];
    for (int k = 0; k < 9; k++) lo[k] = hi[k] = z;
    for (int i = 0; i < 5; i++) {
        for (int j = 0; j < 5; j++) {
            lo[i + j] = _mm512_madd52lo_epu64(lo[i + j], a->l[i], b->l[j]);
            hi[i + j] = _mm512_madd52hi_epu64(hi[i + j], a->l[i], b->l[j]);
        }
    }
    /* lo[k] < 5 * 2^52, hi[k] < 5 * 2^52: c[k] < 2^55 */
    c[0] = lo[0];
    for (int k = 1; k < 9; k++) c[k] = _mm512_add_epi64(lo[k], _mm512_slli_epi64(hi[k - 1], 1));
    c[9] = _mm512_slli_epi64(hi[8], 1);
    fe_fold(r, c);
}

static inline void fe_sqr(fe *r, const fe *a) {
    const vec z = _mm512_setzero_si512();
    vec dlo[9], dhi[9], xlo[9], xhi[9], c[10];
    for (int k = 0; k < 9; k++) dlo[k] = dhi[k] = xlo[k] = xhi[k] = z;
    for (int i = 0; i < 5; i++) {
        dlo[2 * i] = _mm512_madd52lo_epu64(dlo[2 * i], a->l[i], a->l[i]);
        dhi[2 * i] = _mm512_madd52hi_epu64(dhi[2 * i], a->l[i], a->l[i]);
        for (int j = i + 1; j < 5; j++) {
            xlo[i + j] = _mm512_madd52lo_epu64(xlo[i + j], a->l[i], a->l[j]);
            xhi[i + j] = _mm512_madd52hi_epu64(xhi[i + j], a->l[i], a->l[j]);
        }
    }
    /* column k: d_lo + 2 x_lo + 2 (d_hi + 2 x_hi) of column k - 1; each < 2^57 */
    vec h[9];
    for (int k = 0; k < 9; k++) {
        h[k] = _mm512_add_epi64(dhi[k], _mm512_slli_epi64(xhi[k], 1));
        c[k] = _mm512_add_epi64(dlo[k], _mm512_slli_epi64(xlo[k], 1));
    }
    for (int k = 1; k < 9; k++) c[k] = _mm512_add_epi64(c[k], _mm512_slli_epi64(h[k - 1], 1));
    c[9] = _mm512_slli_epi64(h[8], 1);
    fe_fold(r, c);
}

static inline void fe_sqr_n(fe *r, const fe *a, int n) {
    fe_sqr(r, a);
    for (int i = 1; i < n; i++) fe_sqr(r, r);
}

/* r = aa + 121665 * e (carried); e carried, aa reduced */
static inline void fe_add_a24(fe *r, const fe *aa, const fe *e) {
    const vec a24 = SET1(121665);
    vec hi[5];
    for (int i = 0; i < 5; i++) {
        r->l[i] = _mm512_madd52lo_epu64(aa->l[i], e->l[i], a24);
        hi[i] = _mm512_madd52hi_epu64(_mm512_setzero_si512(), e->l[i], a24); /* < 2^17 */
    }
    for (int i = 1; i < 5; i++) r->l[i] = _mm512_add_epi64(r->l[i], _mm512_slli_epi64(hi[i - 1], 1));
    r->l[0] = _mm512_madd52lo_epu64(r->l[0], hi[4], SET1(38));
    fe_carry(r);
}

/* z^(2^250 - 1) and z^11; optionally z^6 (for the Legendre symbol) */
static void fe_pow_common(fe *t250, fe *z11, fe *z6, const fe *z) {
    fe z2, z4, z8, z9, t, z5_0, z10_0, z20_0, z50_0, z100_0;
    fe_sqr(&z2, z);
    fe_sqr(&z4, &z2);
    fe_sqr(&z8, &z4);
    fe_mul(&z9, &z8, z);
    fe_mul(z11, &z9, &z2);
    if (z6) fe_mul(z6, &z4, &z2);
    fe_sqr(&t, z11);
    fe_mul(&z5_0, &t, &z9); /* 2^5 - 1 */
    fe_sqr_n(&t, &z5_0, 5);
    fe_mul(&z10_0, &t, &z5_0);
    fe_sqr_n(&t, &z10_0, 10);
    fe_mul(&z20_0, &t, &z10_0);
    fe_sqr_n(&t, &z20_0, 20);
    fe_mul(&t, &t, &z20_0); /* 2^40 - 1 */
    fe_sqr_n(&t, &t, 10);
    fe_mul(&z50_0, &t, &z10_0);
    fe_sqr_n(&t, &z50_0, 50);
    fe_mul(&z100_0, &t, &z50_0);
    fe_sqr_n(&t, &z100_0, 100);
    fe_mul(&t, &t, &z100_0); /* 2^200 - 1 */
    fe_sqr_n(&t, &t, 50);
    fe_mul(t250, &t, &z50_0); /* 2^250 - 1 */
}

static void fe_invert(fe *r, const fe *z) { /* z^(p - 2) = z^(2^255 - 21) */
    fe t, z11;
    fe_pow_common(&t, &z11, NULL, z);
    fe_sqr_n(&t, &t, 5);
    fe_mul(r, &t, &z11);
}

static void fe_legendre(fe *r, const fe *z) { /* z^((p - 1) / 2) = z^(2^254 - 10) */
    fe t, z11, z6;
    fe_pow_common(&t, &z11, &z6, z);
    fe_sqr_n(&t, &t, 4);
    fe_mul(r, &t, &z6);
}

static inline void fe_cswap(fe *a, fe *b, vec mask) {
    for (int i = 0; i < 5; i++) {
        vec t = _mm512_and_si512(mask, _mm512_xor_si512(a->l[i], b->l[i]));
        a->l[i] = _mm512_xor_si512(a->l[i], t);
        b->l[i] = _mm512_xor_si512(b->l[i], t);
    }
}

static void fe_load8(fe *r, uint64_t limbs[5][8]) {
    for (int i = 0; i < 5; i++) r->l[i] = _mm512_loadu_si512((const void *)limbs[i]);
}

static void fe_store8(uint64_t limbs[5][8], const fe *a) {
    for (int i = 0; i < 5; i++) _mm512_storeu_si512((void *)limbs[i], a->l[i]);
}

/* out = X25519(e, u) for 8 lanes; e is the clamped scalar */
static void ladder8(fe *out, const fe *u, const uint8_t e[32]) {
    fe x1 = *u, x2, z2, x3 = *u, z3, a, aa, b, bb, ee, c, d, da, cb, t;
    const vec zero = _mm512_setzero_si512();
    for (int i = 0; i < 5; i++) x2.l[i] = z2.l[i] = z3.l[i] = zero;
    x2.l[0] = z3.l[0] = SET1(1);
    uint64_t swap = 0;
    for (int pos = 254; pos >= 0; pos--) {
        uint64_t bit = (e[pos >> 3] >> (pos & 7)) & 1;
        swap ^= bit;
        vec mask = SET1(0 - swap);
        fe_cswap(&x2, &x3, mask);
        fe_cswap(&z2, &z3, mask);
        swap = bit;
        fe_add(&a, &x2, &z2);
        fe_sqr(&aa, &a);
        fe_sub(&b, &x2, &z2);
        fe_sqr(&bb, &b);
        fe_sub(&ee, &aa, &bb);
        fe_add(&c, &x3, &z3);
        fe_sub(&d, &x3, &z3);
        fe_mul(&da, &d, &a);
        fe_mul(&cb, &c, &b);
        fe_add(&t, &da, &cb);
        fe_sqr(&x3, &t);
        fe_sub(&t, &da, &cb);
        fe_sqr(&t, &t);
        fe_mul(&z3, &x1, &t);
        fe_mul(&x2, &aa, &bb);
        fe_add_a24(&t, &aa, &ee);
        fe_mul(&z2, &ee, &t);
    }
    vec mask = SET1(0 - swap);
    fe_cswap(&x2, &x3, mask);
    fe_cswap(&z2, &z3, mask);
    fe_invert(&t, &z2);
    fe_mul(out, &x2, &t);
}

/* Elligator2 of 8 field elements r (as in fedrec.psi.curve25519.elligator2): w = -A / (1 + 2 r^2);
 * u = w if w^3 + A w^2 + w is a square, else -w - A. */
static void elligator8(fe *u, const fe *r) {
    fe r2, den, inv, w, t, s, chi, negw;
    const vec zero = _mm512_setzero_si512();
    fe one, biga;
    for (int i = 0; i < 5; i++) one.l[i] = biga.l[i] = zero;
    one.l[0] = SET1(1);
    biga.l[0] = SET1(486662);
    fe_sqr(&r2, r);
    fe_add(&den, &r2, &r2);
    fe_add(&den, &den, &one);
    fe_invert(&inv, &den);
    fe_mul(&t, &biga, &inv); /* A / den */
    fe zfe;
    for (int i = 0; i < 5; i++) zfe.l[i] = zero;
    fe_sub(&w, &zfe, &t); /* w = -A / den */
    fe_add(&t, &w, &biga);
    fe_mul(&t, &t, &w);
    fe_add(&t, &t, &one);
    fe_mul(&s, &t, &w); /* w (w (w + A) + 1) */
    fe_legendre(&chi, &s);
    fe_add(&t, &w, &biga);
    fe_sub(&negw, &zfe, &t); /* -w - A */
    /* chi is 1 or p - 1 (never 0, see the Python docstring); choose per lane, branch-free */
    uint64_t limbs[5][8];
    uint8_t enc[32];
    fe_store8(limbs, &chi);
    uint64_t m[8];
    for (int lane = 0; lane < 8; lane++) {
        uint64_t l[5];
        for (int i = 0; i < 5; i++) l[i] = limbs[i][lane];
        store_limbs(enc, l);
        m[lane] = (uint64_t)0 - (uint64_t)(enc[0] == 0xec); /* p - 1 = ...ec: a non-square */
    }
    vec mask = _mm512_loadu_si512((const void *)m);
    *u = w;
    fe_cswap(u, &negw, mask);
}

static void scalar_clamp(uint8_t e[32], const uint8_t k[32]) {
    memcpy(e, k, 32);
    e[0] &= 248;
    e[31] &= 127;
    e[31] |= 64;
}

/* X25519(k, points[i]) for i < n into out (n x 32 bytes); stride: bytes between inputs (32 for points,
 * 64 for digests whose first 32 bytes feed Elligator2 when hash is set). Returns n when every output is
 * non-zero, else the index of the first zero output (small-order input). */
static long long batch(uint8_t *out, const uint8_t *k, const uint8_t *in, size_t n, size_t stride, int hash) {
    uint8_t e[32];
    uint64_t limbs[5][8];
    long long bad = (long long)n;
    scalar_clamp(e, k);
    for (size_t base = 0; base < n; base += 8) {
        size_t m = n - base < 8 ? n - base : 8;
        for (size_t lane = 0; lane < 8; lane++) {
            uint64_t l[5];
            static const uint8_t nine[32] = {9};
            load_limbs(l, lane < m ? in + (base + lane) * stride : nine);
            for (int i = 0; i < 5; i++) limbs[i][lane] = l[i];
        }
        fe u, r;
        fe_load8(&u, limbs);
        if (hash) {
            elligator8(&r, &u);
            u = r;
        }
        ladder8(&r, &u, e);
        fe_store8(limbs, &r);
        for (size_t lane = 0; lane < m; lane++) {
            uint64_t l[5];
            uint8_t *o = out + (base + lane) * 32, acc = 0;
            for (int i = 0; i < 5; i++) l[i] = limbs[i][lane];
            store_limbs(o, l);
            for (int i = 0; i < 32; i++) acc |= o[i];
            if (acc == 0 && bad == (long long)n) bad = (long long)(base + lane);
        }
    }
    memset(e, 0, sizeof e);
    __asm__ __volatile__("" : : "r"(e) : "memory");
    return bad;
}

long long fedrec_x25519_ifma_batch(uint8_t *out, const uint8_t *k, const uint8_t *points, size_t n) {
    return batch(out, k, points, n, 32, 0);
}

/* X25519(k, elligator2(digests[i][0:32])) with 64-byte digests (SHA-512 outputs). */
long long fedrec_x25519_ifma_hash_batch(uint8_t *out, const uint8_t *k, const uint8_t *digests, size_t n) {
    return batch(out, k, digests, n, 64, 1);
}

/* elligator2 only (for tests): out[i] = canonical u of elligator2(digests[i][0:32]) */
void fedrec_elligator2_ifma(uint8_t *out, const uint8_t *digests, size_t n) {
    uint64_t limbs[5][8];
    for (size_t base = 0; base < n; base += 8) {
        size_t m = n - base < 8 ? n - base : 8;
        for (size_t lane = 0; lane < 8; lane++) {
            uint64_t l[5] = {1, 0, 0, 0, 0};
            if (lane < m) load_limbs(l, digests + (base + lane) * 64);
            for (int i = 0; i < 5; i++) limbs[i][lane] = l[i];
        }
        fe r, u;
        fe_load8(&r, limbs);
        elligator8(&u, &r);
        fe_store8(limbs, &u);
        for (size_t lane = 0; lane < m; lane++) {
            uint64_t l[5];
            for (int i = 0; i < 5; i++) l[i] = limbs[i][lane];
            store_limbs(out + (base + lane) * 32, l);
        }
    }
}

#pragma GCC pop_options
#endif
