/* mt/tokenizer.h — text to token ids, for samples/preprocess_data.c: a byte-level tokenizer and
 * GPT-2's byte-level BPE (vocab.json + merges.txt as Megatron's GPT2BPETokenizer reads them, or a
 * Hugging Face tokenizer.json whose model is BPE with the ByteLevel pre-tokenizer), and the small
 * JSON reader they need (also used for JSONL input).
 *
 *   mt_tokenizer tk;
 *   MT_CHECK(mt_tokenizer_open_gpt2(&tk, "gpt2-vocab.json", "gpt2-merges.txt"));
 *   mt_tok_state st = {0};                  // per thread: word cache and scratch
 *   mt_i32buf ids = {0};
 *   MT_CHECK(mt_tokenizer_encode(&tk, &st, text, strlen(text), &ids));   // appends to ids
 *   mt_tok_state_free(&st); mt_i32buf_free(&ids); mt_tokenizer_close(&tk);
 *
 * Defines
 *   mt_buf, mt_i32buf (growable byte / int32 buffers)
 *   mt_json_skip_ws, mt_json_string, mt_json_skip_value   (RFC 8259 strings: \uXXXX, surrogate pairs)
 *   mt_utf8_decode, mt_unicode_is_letter / _is_number / _is_space
 *   mt_gpt2_pretoken_end    GPT-2's pre-tokenizer regex, by hand:
 *                           's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   mt_tokenizer, mt_tokenizer_open_bytes / _open_gpt2 / _open_hf / _load_gpt2_memory / _close,
 *   mt_tok_state, mt_tokenizer_encode, mt_tokenizer_token_bytes, mt_tok_state_free
 *
 * Notes
 *   - Merges are applied lowest rank first, leftmost first among equal ranks (a heap over the
 *     symbol list, so long words cost n log n): the same ids as GPT-2's encoder and HF tokenizers
 *     for merges learned by training.
 *   - \p{L}, \p{N} are the Unicode 14 general categories (tables below); \s is White_Space.
 *   - Invalid UTF-8 bytes are kept (byte-level BPE encodes any bytes) and pre-tokenize as
 *     "other" characters; a lone \uD800-\uDFFF escape in JSON decodes to U+FFFD.
 *   - The byte-level tokenizer maps byte b to id b; its end-of-document id is 256 (vocab 257).
 */
#ifndef MT_TOKENIZER_H
#define MT_TOKENIZER_H

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ buffers */

typedef struct mt_buf {
    char *data;
    size_t len, cap; /* bytes */
} mt_buf;

typedef struct mt_i32buf {
    int32_t *data;
    size_t len, cap; /* elements */
} mt_i32buf;

MT_API mt_status mt_buf_reserve(mt_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return MT_OK;
    {
        size_t nc = b->cap ? b->cap : 256;
        char *p;
        while (nc < b->len + extra + 1) nc *= 2;
        MT_TRY(mt_calloc(nc, (void **)&p));
        if (b->len) memcpy(p, b->data, b->len);
        mt_free(b->data);
        b->data = p;
        b->cap = nc;
    }
    return MT_OK;
}
MT_API mt_status mt_buf_push(mt_buf *b, const void *src, size_t n) {
    MT_TRY(mt_buf_reserve(b, n));
    memcpy(b->data + b->len, src, n);
    b->len += n;
    b->data[b->len] = 0;
    return MT_OK;
}
MT_API void mt_buf_free(mt_buf *b) { mt_free(b->data); memset(b, 0, sizeof *b); }

MT_API mt_status mt_i32buf_reserve(mt_i32buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return MT_OK;
    {
        size_t nc = b->cap ? b->cap : 256;
        int32_t *p;
        while (nc < b->len + extra) nc *= 2;
        MT_TRY(mt_calloc(nc * sizeof(int32_t), (void **)&p));
        if (b->len) memcpy(p, b->data, b->len * sizeof(int32_t));
        mt_free(b->data);
        b->data = p;
        b->cap = nc;
    }
    return MT_OK;
}
MT_API mt_status mt_i32buf_push(mt_i32buf *b, int32_t v) {
    MT_TRY(mt_i32buf_reserve(b, 1));
    b->data[b->len++] = v;
    return MT_OK;
}
MT_API void mt_i32buf_free(mt_i32buf *b) { mt_free(b->data); memset(b, 0, sizeof *b); }

/* ------------------------------------------------------------------ UTF-8 and Unicode classes */

/* Decode one code point at s[0..n); *len gets its byte length. Invalid or truncated sequences
 * (overlong forms, surrogates, > U+10FFFF) decode as one byte with code point -1. */
MT_API int32_t mt_utf8_decode(const unsigned char *s, size_t n, int *len) {
    unsigned c = s[0];
    int need, i;
    uint32_t cp, min;
    *len = 1;
    if (c < 0x80) return (int32_t)c;
    if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; min = 0x10000; }
    else return -1;
    if ((size_t)need >= n) return -1;
    for (i = 1; i <= need; i++) {
        if ((s[i] & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    *len = need + 1;
    return (int32_t)cp;
}

MT_API int mt_utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode 14 general categories L* and N*, as sorted inclusive [first, last] pairs. */
static const uint32_t mt__uni_letter[1368] = {
    0x41, 0x5a, 0x61, 0x7a, 0xaa, 0xaa, 0xb5, 0xb5, 0xba, 0xba, 0xc0, 0xd6,
    0xd8, 0xf6, 0xf8, 0x2c1, 0x2c6, 0x2d1, 0x2e0, 0x2e4, 0x2ec, 0x2ec, 0x2ee, 0x2ee,
    0x370, 0x374, 0x376, 0x377, 0x37a, 0x37d, 0x37f, 0x37f, 0x386, 0x386, 0x388, 0x38a,
    0x38c, 0x38c, 0x38e, 0x3a1, 0x3a3, 0x3f5, 0x3f7, 0x481, 0x48a, 0x52f, 0x531, 0x556,
    0x559, 0x559, 0x560, 0x588, 0x5d0, 0x5ea, 0x5ef, 0x5f2, 0x620, 0x64a, 0x66e, 0x66f,
    0x671, 0x6d3, 0x6d5, 0x6d5, 0x6e5, 0x6e6, 0x6ee, 0x6ef, 0x6fa, 0x6fc, 0x6ff, 0x6ff,
    0x710, 0x710, 0x712, 0x72f, 0x74d, 0x7a5, 0x7b1, 0x7b1, 0x7ca, 0x7ea, 0x7f4, 0x7f5,
    0x7fa, 0x7fa, 0x800, 0x815, 0x81a, 0x81a, 0x824, 0x824, 0x828, 0x828, 0x840, 0x858,
    0x860, 0x86a, 0x870, 0x887, 0x889, 0x88f, 0x8a0, 0x8c9, 0x904, 0x939, 0x93d, 0x93d,
    0x950, 0x950, 0x958, 0x961, 0x971, 0x980, 0x985, 0x98c, 0x98f, 0x990, 0x993, 0x9a8,
    0x9aa, 0x9b0, 0x9b2, 0x9b2, 0x9b6, 0x9b9, 0x9bd, 0x9bd, 0x9ce, 0x9ce, 0x9dc, 0x9dd,
    0x9df, 0x9e1, 0x9f0, 0x9f1, 0x9fc, 0x9fc, 0xa05, 0xa0a, 0xa0f, 0xa10, 0xa13, 0xa28,
    0xa2a, 0xa30, 0xa32, 0xa33, 0xa35, 0xa36, 0xa38, 0xa39, 0xa59, 0xa5c, 0xa5e, 0xa5e,
    0xa72, 0xa74, 0xa85, 0xa8d, 0xa8f, 0xa91, 0xa93, 0xaa8, 0xaaa, 0xab0, 0xab2, 0xab3,
    0xab5, 0xab9, 0xabd, 0xabd, 0xad0, 0xad0, 0xae0, 0xae1, 0xaf9, 0xaf9, 0xb05, 0xb0c,
    0xb0f, 0xb10, 0xb13, 0xb28, 0xb2a, 0xb30, 0xb32, 0xb33, 0xb35, 0xb39, 0xb3d, 0xb3d,
    0xb5c, 0xb5d, 0xb5f, 0xb61, 0xb71, 0xb71, 0xb83, 0xb83, 0xb85, 0xb8a, 0xb8e, 0xb90,
    0xb92, 0xb95, 0xb99, 0xb9a, 0xb9c, 0xb9c, 0xb9e, 0xb9f, 0xba3, 0xba4, 0xba8, 0xbaa,
    0xbae, 0xbb9, 0xbd0, 0xbd0, 0xc05, 0xc0c, 0xc0e, 0xc10, 0xc12, 0xc28, 0xc2a, 0xc39,
    0xc3d, 0xc3d, 0xc58, 0xc5a, 0xc5c, 0xc5d, 0xc60, 0xc61, 0xc80, 0xc80, 0xc85, 0xc8c,
    0xc8e, 0xc90, 0xc92, 0xca8, 0xcaa, 0xcb3, 0xcb5, 0xcb9, 0xcbd, 0xcbd, 0xcdc, 0xcde,
    0xce0, 0xce1, 0xcf1, 0xcf2, 0xd04, 0xd0c, 0xd0e, 0xd10, 0xd12, 0xd3a, 0xd3d, 0xd3d,
    0xd4e, 0xd4e, 0xd54, 0xd56, 0xd5f, 0xd61, 0xd7a, 0xd7f, 0xd85, 0xd96, 0xd9a, 0xdb1,
    0xdb3, 0xdbb, 0xdbd, 0xdbd, 0xdc0, 0xdc6, 0xe01, 0xe30, 0xe32, 0xe33, 0xe40, 0xe46,
    0xe81, 0xe82, 0xe84, 0xe84, 0xe86, 0xe8a, 0xe8c, 0xea3, 0xea5, 0xea5, 0xea7, 0xeb0,
    0xeb2, 0xeb3, 0xebd, 0xebd, 0xec0, 0xec4, 0xec6, 0xec6, 0xedc, 0xedf, 0xf00, 0xf00,
    0xf40, 0xf47, 0xf49, 0xf6c, 0xf88, 0xf8c, 0x1000, 0x102a, 0x103f, 0x103f, 0x1050, 0x1055,
    0x105a, 0x105d, 0x1061, 0x1061, 0x1065, 0x1066, 0x106e, 0x1070, 0x1075, 0x1081, 0x108e, 0x108e,
    0x10a0, 0x10c5, 0x10c7, 0x10c7, 0x10cd, 0x10cd, 0x10d0, 0x10fa, 0x10fc, 0x1248, 0x124a, 0x124d,
    0x1250, 0x1256, 0x1258, 0x1258, 0x125a, 0x125d, 0x1260, 0x1288, 0x128a, 0x128d, 0x1290, 0x12b0,
    0x12b2, 0x12b5, 0x12b8, 0x12be, 0x12c0, 0x12c0, 0x12c2, 0x12c5, 0x12c8, 0x12d6, 0x12d8, 0x1310,
    0x1312, 0x1315, 0x1318, 0x135a, 0x1380, 0x138f, 0x13a0, 0x13f5, 0x13f8, 0x13fd, 0x1401, 0x166c,
    0x166f, 0x167f, 0x1681, 0x169a, 0x16a0, 0x16ea, 0x16f1, 0x16f8, 0x1700, 0x1711, 0x171f, 0x1731,
    0x1740, 0x1751, 0x1760, 0x176c, 0x176e, 0x1770, 0x1780, 0x17b3, 0x17d7, 0x17d7, 0x17dc, 0x17dc,
    0x1820, 0x1878, 0x1880, 0x1884, 0x1887, 0x18a8, 0x18aa, 0x18aa, 0x18b0, 0x18f5, 0x1900, 0x191e,
    0x1950, 0x196d, 0x1970, 0x1974, 0x1980, 0x19ab, 0x19b0, 0x19c9, 0x1a00, 0x1a16, 0x1a20, 0x1a54,
    0x1aa7, 0x1aa7, 0x1b05, 0x1b33, 0x1b45, 0x1b4c, 0x1b83, 0x1ba0, 0x1bae, 0x1baf, 0x1bba, 0x1be5,
    0x1c00, 0x1c23, 0x1c4d, 0x1c4f, 0x1c5a, 0x1c7d, 0x1c80, 0x1c8a, 0x1c90, 0x1cba, 0x1cbd, 0x1cbf,
    0x1ce9, 0x1cec, 0x1cee, 0x1cf3, 0x1cf5, 0x1cf6, 0x1cfa, 0x1cfa, 0x1d00, 0x1dbf, 0x1e00, 0x1f15,
    0x1f18, 0x1f1d, 0x1f20, 0x1f45, 0x1f48, 0x1f4d, 0x1f50, 0x1f57, 0x1f59, 0x1f59, 0x1f5b, 0x1f5b,
    0x1f5d, 0x1f5d, 0x1f5f, 0x1f7d, 0x1f80, 0x1fb4, 0x1fb6, 0x1fbc, 0x1fbe, 0x1fbe, 0x1fc2, 0x1fc4,
    0x1fc6, 0x1fcc, 0x1fd0, 0x1fd3, 0x1fd6, 0x1fdb, 0x1fe0, 0x1fec, 0x1ff2, 0x1ff4, 0x1ff6, 0x1ffc,
    0x2071, 0x2071, 0x207f, 0x207f, 0x2090, 0x209c, 0x2102, 0x2102, 0x2107, 0x2107, 0x210a, 0x2113,
    0x2115, 0x2115, 0x2119, 0x211d, 0x2124, 0x2124, 0x2126, 0x2126, 0x2128, 0x2128, 0x212a, 0x212d,
    0x212f, 0x2139, 0x213c, 0x213f, 0x2145, 0x2149, 0x214e, 0x214e, 0x2183, 0x2184, 0x2c00, 0x2ce4,
    0x2ceb, 0x2cee, 0x2cf2, 0x2cf3, 0x2d00, 0x2d25, 0x2d27, 0x2d27, 0x2d2d, 0x2d2d, 0x2d30, 0x2d67,
    0x2d6f, 0x2d6f, 0x2d80, 0x2d96, 0x2da0, 0x2da6, 0x2da8, 0x2dae, 0x2db0, 0x2db6, 0x2db8, 0x2dbe,
    0x2dc0, 0x2dc6, 0x2dc8, 0x2dce, 0x2dd0, 0x2dd6, 0x2dd8, 0x2dde, 0x2e2f, 0x2e2f, 0x3005, 0x3006,
    0x3031, 0x3035, 0x303b, 0x303c, 0x3041, 0x3096, 0x309d, 0x309f, 0x30a1, 0x30fa, 0x30fc, 0x30ff,
    0x3105, 0x312f, 0x3131, 0x318e, 0x31a0, 0x31bf, 0x31f0, 0x31ff, 0x3400, 0x4dbf, 0x4e00, 0xa48c,
    0xa4d0, 0xa4fd, 0xa500, 0xa60c, 0xa610, 0xa61f, 0xa62a, 0xa62b, 0xa640, 0xa66e, 0xa67f, 0xa69d,
    0xa6a0, 0xa6e5, 0xa717, 0xa71f, 0xa722, 0xa788, 0xa78b, 0xa7dc, 0xa7f1, 0xa801, 0xa803, 0xa805,
    0xa807, 0xa80a, 0xa80c, 0xa822, 0xa840, 0xa873, 0xa882, 0xa8b3, 0xa8f2, 0xa8f7, 0xa8fb, 0xa8fb,
    0xa8fd, 0xa8fe, 0xa90a, 0xa925, 0xa930, 0xa946, 0xa960, 0xa97c, 0xa984, 0xa9b2, 0xa9cf, 0xa9cf,
    0xa9e0, 0xa9e4, 0xa9e6, 0xa9ef, 0xa9fa, 0xa9fe, 0xaa00, 0xaa28, 0xaa40, 0xaa42, 0xaa44, 0xaa4b,
    0xaa60, 0xaa76, 0xaa7a, 0xaa7a, 0xaa7e, 0xaaaf, 0xaab1, 0xaab1, 0xaab5, 0xaab6, 0xaab9, 0xaabd,
    0xaac0, 0xaac0, 0xaac2, 0xaac2, 0xaadb, 0xaadd, 0xaae0, 0xaaea, 0xaaf2, 0xaaf4, 0xab01, 0xab06,
    0xab09, 0xab0e, 0xab11, 0xab16, 0xab20, 0xab26, 0xab28, 0xab2e, 0xab30, 0xab5a, 0xab5c, 0xab69,
    0xab70, 0xabe2, 0xac00, 0xd7a3, 0xd7b0, 0xd7c6, 0xd7cb, 0xd7fb, 0xf900, 0xfa6d, 0xfa70, 0xfad9,
    0xfb00, 0xfb06, 0xfb13, 0xfb17, 0xfb1d, 0xfb1d, 0xfb1f, 0xfb28, 0xfb2a, 0xfb36, 0xfb38, 0xfb3c,
    0xfb3e, 0xfb3e, 0xfb40, 0xfb41, 0xfb43, 0xfb44, 0xfb46, 0xfbb1, 0xfbd3, 0xfd3d, 0xfd50, 0xfd8f,
    0xfd92, 0xfdc7, 0xfdf0, 0xfdfb, 0xfe70, 0xfe74, 0xfe76, 0xfefc, 0xff21, 0xff3a, 0xff41, 0xff5a,
    0xff66, 0xffbe, 0xffc2, 0xffc7, 0xffca, 0xffcf, 0xffd2, 0xffd7, 0xffda, 0xffdc, 0x10000, 0x1000b,
    0x1000d, 0x10026, 0x10028, 0x1003a, 0x1003c, 0x1003d, 0x1003f, 0x1004d, 0x10050, 0x1005d, 0x10080, 0x100fa,
    0x10280, 0x1029c, 0x102a0, 0x102d0, 0x10300, 0x1031f, 0x1032d, 0x10340, 0x10342, 0x10349, 0x10350, 0x10375,
    0x10380, 0x1039d, 0x103a0, 0x103c3, 0x103c8, 0x103cf, 0x10400, 0x1049d, 0x104b0, 0x104d3, 0x104d8, 0x104fb,
    0x10500, 0x10527, 0x10530, 0x10563, 0x10570, 0x1057a, 0x1057c, 0x1058a, 0x1058c, 0x10592, 0x10594, 0x10595,
    0x10597, 0x105a1, 0x105a3, 0x105b1, 0x105b3, 0x105b9, 0x105bb, 0x105bc, 0x105c0, 0x105f3, 0x10600, 0x10736,
    0x10740, 0x10755, 0x10760, 0x10767, 0x10780, 0x10785, 0x10787, 0x107b0, 0x107b2, 0x107ba, 0x10800, 0x10805,
    0x10808, 0x10808, 0x1080a, 0x10835, 0x10837, 0x10838, 0x1083c, 0x1083c, 0x1083f, 0x10855, 0x10860, 0x10876,
    0x10880, 0x1089e, 0x108e0, 0x108f2, 0x108f4, 0x108f5, 0x10900, 0x10915, 0x10920, 0x10939, 0x10940, 0x10959,
    0x10980, 0x109b7, 0x109be, 0x109bf, 0x10a00, 0x10a00, 0x10a10, 0x10a13, 0x10a15, 0x10a17, 0x10a19, 0x10a35,
    0x10a60, 0x10a7c, 0x10a80, 0x10a9c, 0x10ac0, 0x10ac7, 0x10ac9, 0x10ae4, 0x10b00, 0x10b35, 0x10b40, 0x10b55,
    0x10b60, 0x10b72, 0x10b80, 0x10b91, 0x10c00, 0x10c48, 0x10c80, 0x10cb2, 0x10cc0, 0x10cf2, 0x10d00, 0x10d23,
    0x10d4a, 0x10d65, 0x10d6f, 0x10d85, 0x10e80, 0x10ea9, 0x10eb0, 0x10eb1, 0x10ec2, 0x10ec7, 0x10f00, 0x10f1c,
    0x10f27, 0x10f27, 0x10f30, 0x10f45, 0x10f70, 0x10f81, 0x10fb0, 0x10fc4, 0x10fe0, 0x10ff6, 0x11003, 0x11037,
    0x11071, 0x11072, 0x11075, 0x11075, 0x11083, 0x110af, 0x110d0, 0x110e8, 0x11103, 0x11126, 0x11144, 0x11144,
    0x11147, 0x11147, 0x11150, 0x11172, 0x11176, 0x11176, 0x11183, 0x111b2, 0x111c1, 0x111c4, 0x111da, 0x111da,
    0x111dc, 0x111dc, 0x11200, 0x11211, 0x11213, 0x1122b, 0x1123f, 0x11240, 0x11280, 0x11286, 0x11288, 0x11288,
    0x1128a, 0x1128d, 0x1128f, 0x1129d, 0x1129f, 0x112a8, 0x112b0, 0x112de, 0x11305, 0x1130c, 0x1130f, 0x11310,
    0x11313, 0x11328, 0x1132a, 0x11330, 0x11332, 0x11333, 0x11335, 0x11339, 0x1133d, 0x1133d, 0x11350, 0x11350,
    0x1135d, 0x11361, 0x11380, 0x11389, 0x1138b, 0x1138b, 0x1138e, 0x1138e, 0x11390, 0x113b5, 0x113b7, 0x113b7,
    0x113d1, 0x113d1, 0x113d3, 0x113d3, 0x11400, 0x11434, 0x11447, 0x1144a, 0x1145f, 0x11461, 0x11480, 0x114af,
    0x114c4, 0x114c5, 0x114c7, 0x114c7, 0x11580, 0x115ae, 0x115d8, 0x115db, 0x11600, 0x1162f, 0x11644, 0x11644,
    0x11680, 0x116aa, 0x116b8, 0x116b8, 0x11700, 0x1171a, 0x11740, 0x11746, 0x11800, 0x1182b, 0x118a0, 0x118df,
    0x118ff, 0x11906, 0x11909, 0x11909, 0x1190c, 0x11913, 0x11915, 0x11916, 0x11918, 0x1192f, 0x1193f, 0x1193f,
    0x11941, 0x11941, 0x119a0, 0x119a7, 0x119aa, 0x119d0, 0x119e1, 0x119e1, 0x119e3, 0x119e3, 0x11a00, 0x11a00,
    0x11a0b, 0x11a32, 0x11a3a, 0x11a3a, 0x11a50, 0x11a50, 0x11a5c, 0x11a89, 0x11a9d, 0x11a9d, 0x11ab0, 0x11af8,
    0x11bc0, 0x11be0, 0x11c00, 0x11c08, 0x11c0a, 0x11c2e, 0x11c40, 0x11c40, 0x11c72, 0x11c8f, 0x11d00, 0x11d06,
    0x11d08, 0x11d09, 0x11d0b, 0x11d30, 0x11d46, 0x11d46, 0x11d60, 0x11d65, 0x11d67, 0x11d68, 0x11d6a, 0x11d89,
    0x11d98, 0x11d98, 0x11db0, 0x11ddb, 0x11ee0, 0x11ef2, 0x11f02, 0x11f02, 0x11f04, 0x11f10, 0x11f12, 0x11f33,
    0x11fb0, 0x11fb0, 0x12000, 0x12399, 0x12480, 0x12543, 0x12f90, 0x12ff0, 0x13000, 0x1342f, 0x13441, 0x13446,
    0x13460, 0x143fa, 0x14400, 0x14646, 0x16100, 0x1611d, 0x16800, 0x16a38, 0x16a40, 0x16a5e, 0x16a70, 0x16abe,
    0x16ad0, 0x16aed, 0x16b00, 0x16b2f, 0x16b40, 0x16b43, 0x16b63, 0x16b77, 0x16b7d, 0x16b8f, 0x16d40, 0x16d6c,
    0x16e40, 0x16e7f, 0x16ea0, 0x16eb8, 0x16ebb, 0x16ed3, 0x16f00, 0x16f4a, 0x16f50, 0x16f50, 0x16f93, 0x16f9f,
    0x16fe0, 0x16fe1, 0x16fe3, 0x16fe3, 0x16ff2, 0x16ff3, 0x17000, 0x18cd5, 0x18cff, 0x18d1e, 0x18d80, 0x18df2,
    0x1aff0, 0x1aff3, 0x1aff5, 0x1affb, 0x1affd, 0x1affe, 0x1b000, 0x1b122, 0x1b132, 0x1b132, 0x1b150, 0x1b152,
    0x1b155, 0x1b155, 0x1b164, 0x1b167, 0x1b170, 0x1b2fb, 0x1bc00, 0x1bc6a, 0x1bc70, 0x1bc7c, 0x1bc80, 0x1bc88,
    0x1bc90, 0x1bc99, 0x1d400, 0x1d454, 0x1d456, 0x1d49c, 0x1d49e, 0x1d49f, 0x1d4a2, 0x1d4a2, 0x1d4a5, 0x1d4a6,
    0x1d4a9, 0x1d4ac, 0x1d4ae, 0x1d4b9, 0x1d4bb, 0x1d4bb, 0x1d4bd, 0x1d4c3, 0x1d4c5, 0x1d505, 0x1d507, 0x1d50a,
    0x1d50d, 0x1d514, 0x1d516, 0x1d51c, 0x1d51e, 0x1d539, 0x1d53b, 0x1d53e, 0x1d540, 0x1d544, 0x1d546, 0x1d546,
    0x1d54a, 0x1d550, 0x1d552, 0x1d6a5, 0x1d6a8, 0x1d6c0, 0x1d6c2, 0x1d6da, 0x1d6dc, 0x1d6fa, 0x1d6fc, 0x1d714,
    0x1d716, 0x1d734, 0x1d736, 0x1d74e, 0x1d750, 0x1d76e, 0x1d770, 0x1d788, 0x1d78a, 0x1d7a8, 0x1d7aa, 0x1d7c2,
    0x1d7c4, 0x1d7cb, 0x1df00, 0x1df1e, 0x1df25, 0x1df2a, 0x1e030, 0x1e06d, 0x1e100, 0x1e12c, 0x1e137, 0x1e13d,
    0x1e14e, 0x1e14e, 0x1e290, 0x1e2ad, 0x1e2c0, 0x1e2eb, 0x1e4d0, 0x1e4eb, 0x1e5d0, 0x1e5ed, 0x1e5f0, 0x1e5f0,
    0x1e6c0, 0x1e6de, 0x1e6e0, 0x1e6e2, 0x1e6e4, 0x1e6e5, 0x1e6e7, 0x1e6ed, 0x1e6f0, 0x1e6f4, 0x1e6fe, 0x1e6ff,
    0x1e7e0, 0x1e7e6, 0x1e7e8, 0x1e7eb, 0x1e7ed, 0x1e7ee, 0x1e7f0, 0x1e7fe, 0x1e800, 0x1e8c4, 0x1e900, 0x1e943,
    0x1e94b, 0x1e94b, 0x1ee00, 0x1ee03, 0x1ee05, 0x1ee1f, 0x1ee21, 0x1ee22, 0x1ee24, 0x1ee24, 0x1ee27, 0x1ee27,
    0x1ee29, 0x1ee32, 0x1ee34, 0x1ee37, 0x1ee39, 0x1ee39, 0x1ee3b, 0x1ee3b, 0x1ee42, 0x1ee42, 0x1ee47, 0x1ee47,
    0x1ee49, 0x1ee49, 0x1ee4b, 0x1ee4b, 0x1ee4d, 0x1ee4f, 0x1ee51, 0x1ee52, 0x1ee54, 0x1ee54, 0x1ee57, 0x1ee57,
    0x1ee59, 0x1ee59, 0x1ee5b, 0x1ee5b, 0x1ee5d, 0x1ee5d, 0x1ee5f, 0x1ee5f, 0x1ee61, 0x1ee62, 0x1ee64, 0x1ee64,
    0x1ee67, 0x1ee6a, 0x1ee6c, 0x1ee72, 0x1ee74, 0x1ee77, 0x1ee79, 0x1ee7c, 0x1ee7e, 0x1ee7e, 0x1ee80, 0x1ee89,
    0x1ee8b, 0x1ee9b, 0x1eea1, 0x1eea3, 0x1eea5, 0x1eea9, 0x1eeab, 0x1eebb, 0x20000, 0x2a6df, 0x2a700, 0x2b81d,
    0x2b820, 0x2cead, 0x2ceb0, 0x2ebe0, 0x2ebf0, 0x2ee5d, 0x2f800, 0x2fa1d, 0x30000, 0x3134a, 0x31350, 0x33479,
};
static const uint32_t mt__uni_number[292] = {
    0x30, 0x39, 0xb2, 0xb3, 0xb9, 0xb9, 0xbc, 0xbe, 0x660, 0x669, 0x6f0, 0x6f9,
    0x7c0, 0x7c9, 0x966, 0x96f, 0x9e6, 0x9ef, 0x9f4, 0x9f9, 0xa66, 0xa6f, 0xae6, 0xaef,
    0xb66, 0xb6f, 0xb72, 0xb77, 0xbe6, 0xbf2, 0xc66, 0xc6f, 0xc78, 0xc7e, 0xce6, 0xcef,
    0xd58, 0xd5e, 0xd66, 0xd78, 0xde6, 0xdef, 0xe50, 0xe59, 0xed0, 0xed9, 0xf20, 0xf33,
    0x1040, 0x1049, 0x1090, 0x1099, 0x1369, 0x137c, 0x16ee, 0x16f0, 0x17e0, 0x17e9, 0x17f0, 0x17f9,
    0x1810, 0x1819, 0x1946, 0x194f, 0x19d0, 0x19da, 0x1a80, 0x1a89, 0x1a90, 0x1a99, 0x1b50, 0x1b59,
    0x1bb0, 0x1bb9, 0x1c40, 0x1c49, 0x1c50, 0x1c59, 0x2070, 0x2070, 0x2074, 0x2079, 0x2080, 0x2089,
    0x2150, 0x2182, 0x2185, 0x2189, 0x2460, 0x249b, 0x24ea, 0x24ff, 0x2776, 0x2793, 0x2cfd, 0x2cfd,
    0x3007, 0x3007, 0x3021, 0x3029, 0x3038, 0x303a, 0x3192, 0x3195, 0x3220, 0x3229, 0x3248, 0x324f,
    0x3251, 0x325f, 0x3280, 0x3289, 0x32b1, 0x32bf, 0xa620, 0xa629, 0xa6e6, 0xa6ef, 0xa830, 0xa835,
    0xa8d0, 0xa8d9, 0xa900, 0xa909, 0xa9d0, 0xa9d9, 0xa9f0, 0xa9f9, 0xaa50, 0xaa59, 0xabf0, 0xabf9,
    0xff10, 0xff19, 0x10107, 0x10133, 0x10140, 0x10178, 0x1018a, 0x1018b, 0x102e1, 0x102fb, 0x10320, 0x10323,
    0x10341, 0x10341, 0x1034a, 0x1034a, 0x103d1, 0x103d5, 0x104a0, 0x104a9, 0x10858, 0x1085f, 0x10879, 0x1087f,
    0x108a7, 0x108af, 0x108fb, 0x108ff, 0x10916, 0x1091b, 0x109bc, 0x109bd, 0x109c0, 0x109cf, 0x109d2, 0x109ff,
    0x10a40, 0x10a48, 0x10a7d, 0x10a7e, 0x10a9d, 0x10a9f, 0x10aeb, 0x10aef, 0x10b58, 0x10b5f, 0x10b78, 0x10b7f,
    0x10ba9, 0x10baf, 0x10cfa, 0x10cff, 0x10d30, 0x10d39, 0x10d40, 0x10d49, 0x10e60, 0x10e7e, 0x10f1d, 0x10f26,
    0x10f51, 0x10f54, 0x10fc5, 0x10fcb, 0x11052, 0x1106f, 0x110f0, 0x110f9, 0x11136, 0x1113f, 0x111d0, 0x111d9,
    0x111e1, 0x111f4, 0x112f0, 0x112f9, 0x11450, 0x11459, 0x114d0, 0x114d9, 0x11650, 0x11659, 0x116c0, 0x116c9,
    0x116d0, 0x116e3, 0x11730, 0x1173b, 0x118e0, 0x118f2, 0x11950, 0x11959, 0x11bf0, 0x11bf9, 0x11c50, 0x11c6c,
    0x11d50, 0x11d59, 0x11da0, 0x11da9, 0x11de0, 0x11de9, 0x11f50, 0x11f59, 0x11fc0, 0x11fd4, 0x12400, 0x1246e,
    0x16130, 0x16139, 0x16a60, 0x16a69, 0x16ac0, 0x16ac9, 0x16b50, 0x16b59, 0x16b5b, 0x16b61, 0x16d70, 0x16d79,
    0x16e80, 0x16e96, 0x16ff4, 0x16ff6, 0x1ccf0, 0x1ccf9, 0x1d2c0, 0x1d2d3, 0x1d2e0, 0x1d2f3, 0x1d360, 0x1d378,
    0x1d7ce, 0x1d7ff, 0x1e140, 0x1e149, 0x1e2f0, 0x1e2f9, 0x1e4f0, 0x1e4f9, 0x1e5f1, 0x1e5fa, 0x1e8c7, 0x1e8cf,
    0x1e950, 0x1e959, 0x1ec71, 0x1ecab, 0x1ecad, 0x1ecaf, 0x1ecb1, 0x1ecb4, 0x1ed01, 0x1ed2d, 0x1ed2f, 0x1ed3d,
    0x1f100, 0x1f10c, 0x1fbf0, 0x1fbf9,
};

MT_API int mt__uni_in(const uint32_t *r, int n_pairs, int32_t cp) {
    int lo = 0, hi = n_pairs - 1;
    if (cp < 0) return 0;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if ((uint32_t)cp < r[2 * mid]) hi = mid - 1;
        else if ((uint32_t)cp > r[2 * mid + 1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}
MT_API int mt_unicode_is_letter(int32_t cp) {
    if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
    return mt__uni_in(mt__uni_letter, (int)(sizeof mt__uni_letter / sizeof mt__uni_letter[0]) / 2, cp);
}
MT_API int mt_unicode_is_number(int32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return mt__uni_in(mt__uni_number, (int)(sizeof mt__uni_number / sizeof mt__uni_number[0]) / 2, cp);
}
MT_API int mt_unicode_is_space(int32_t cp) {
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* ------------------------------------------------------------------ GPT-2 pre-tokenizer */

enum { MT__CL_OTHER = 0, MT__CL_LETTER = 1, MT__CL_NUMBER = 2, MT__CL_SPACE = 3 };

MT_API int mt__cls_at(const unsigned char *s, size_t n, size_t i, int *len) {
    int32_t cp = mt_utf8_decode(s + i, n - i, len);
    if (cp < 0x80 && cp >= 0) {
        unsigned c = (unsigned)cp;
        *len = 1;
        if ((c | 32) >= 'a' && (c | 32) <= 'z') return MT__CL_LETTER;
        if (c >= '0' && c <= '9') return MT__CL_NUMBER;
        if (c == ' ' || (c >= 9 && c <= 13)) return MT__CL_SPACE;
        return MT__CL_OTHER;
    }
    if (mt_unicode_is_letter(cp)) return MT__CL_LETTER;
    if (mt_unicode_is_number(cp)) return MT__CL_NUMBER;
    if (mt_unicode_is_space(cp)) return MT__CL_SPACE;
    return MT__CL_OTHER;
}

/* End (exclusive byte offset) of the pre-token starting at byte `i` of s[0..n), i < n. */
MT_API size_t mt_gpt2_pretoken_end(const char *text, size_t n, size_t i) {
    const unsigned char *s = (const unsigned char *)text;
    size_t j;
    int len, cls, cls2, len2;
    /* 's|'t|'re|'ve|'m|'ll|'d */
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
    cls = mt__cls_at(s, n, i, &len);
    j = i;
    if (s[i] == ' ' && i + 1 < n) { /* " ?X+" with the optional space */
        cls2 = mt__cls_at(s, n, i + 1, &len2);
        if (cls2 != MT__CL_SPACE) { j = i + 1; cls = cls2; len = len2; }
    }
    if (j > i || cls != MT__CL_SPACE) {
        /* \p{L}+, \p{N}+, or [^\s\p{L}\p{N}]+ */
        int want = cls;
        j += (size_t)len;
        while (j < n) {
            int l;
            if (mt__cls_at(s, n, j, &l) != want) break;
            j += (size_t)l;
        }
        return j;
    }
    /* whitespace run: \s+(?!\S) leaves the last space to the next token when a non-space follows */
    {
        size_t last = i;
        j = i;
        while (j < n) {
            int l;
            if (mt__cls_at(s, n, j, &l) != MT__CL_SPACE) break;
            last = j;
            j += (size_t)l;
        }
        if (j < n && last > i) return last; /* \s+(?!\S) */
        return j;                            /* \s+ (a single space before text, or trailing) */
    }
}

/* ------------------------------------------------------------------ JSON (what JSONL and vocab files need) */

MT_API const char *mt_json_skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

MT_API int mt__hex4(const char *p, uint32_t *v) {
    int i;
    *v = 0;
    for (i = 0; i < 4; i++) {
        char c = p[i];
        uint32_t d;
        if (c >= '0' && c <= '9') d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = (uint32_t)(c - 'A' + 10);
        else return 0;
        *v = (*v << 4) | d;
    }
    return 1;
}

/* Parse the JSON string at *pp (which must point at its opening quote), append its UTF-8 to
 * `out` (when not NULL) and move *pp past the closing quote. Returns MT_ERR_FORMAT on bad input. */
MT_API mt_status mt_json_string(const char **pp, const char *end, mt_buf *out) {
    const char *p = *pp;
    if (p >= end || *p != '"') return MT_ERR_FORMAT;
    p++;
    for (;;) {
        const char *run = p;
        while (p < end && *p != '"' && *p != '\\') p++;
        if (out && p > run) MT_TRY(mt_buf_push(out, run, (size_t)(p - run)));
        if (p >= end) return MT_ERR_FORMAT;
        if (*p == '"') { *pp = p + 1; return MT_OK; }
        /* escape */
        if (p + 1 >= end) return MT_ERR_FORMAT;
        {
            char c = p[1], u8[4];
            uint32_t cp;
            int k;
            p += 2;
            switch (c) {
                case '"': cp = '"'; break;
                case '\\': cp = '\\'; break;
                case '/': cp = '/'; break;
                case 'b': cp = 8; break;
                case 'f': cp = 12; break;
                case 'n': cp = 10; break;
                case 'r': cp = 13; break;
                case 't': cp = 9; break;
                case 'u':
                    if (end - p < 4 || !mt__hex4(p, &cp)) return MT_ERR_FORMAT;
                    p += 4;
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        uint32_t lo;
                        if (end - p >= 6 && p[0] == '\\' && p[1] == 'u' && mt__hex4(p + 2, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            p += 6;
                        } else {
                            cp = 0xFFFD; /* lone high surrogate */
                        }
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        cp = 0xFFFD; /* lone low surrogate */
                    }
                    break;
                default: return MT_ERR_FORMAT;
            }
            k = mt_utf8_encode(cp, u8);
            if (out) MT_TRY(mt_buf_push(out, u8, (size_t)k));
        }
    }
}

/* Skip one JSON value of any type (depth-limited). */
MT_API mt_status mt_json_skip_value(const char **pp, const char *end, int depth) {
    const char *p = mt_json_skip_ws(*pp, end);
    if (depth > 256 || p >= end) return MT_ERR_FORMAT;
    if (*p == '"') {
        MT_TRY(mt_json_string(&p, end, NULL));
    } else if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        int first = 1;
        p = mt_json_skip_ws(p + 1, end);
        while (p < end && *p != close) {
            if (!first) {
                if (*p != ',') return MT_ERR_FORMAT;
                p = mt_json_skip_ws(p + 1, end);
            }
            first = 0;
            if (close == '}') {
                MT_TRY(mt_json_string(&p, end, NULL));
                p = mt_json_skip_ws(p, end);
                if (p >= end || *p != ':') return MT_ERR_FORMAT;
                p++;
            }
            MT_TRY(mt_json_skip_value(&p, end, depth + 1));
            p = mt_json_skip_ws(p, end);
        }
        if (p >= end) return MT_ERR_FORMAT;
        p++;
    } else {
        const char *q = p;
        while (p < end && (*p == '-' || *p == '+' || *p == '.' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
                           (*p >= 'A' && *p <= 'Z')))
            p++;
        if (p == q) return MT_ERR_FORMAT;
    }
    *pp = p;
    return MT_OK;
}

/* ------------------------------------------------------------------ hash maps */

MT_API uint64_t mt__fnv1a(const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    uint64_t h = 0xcbf29ce484222325ull;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

/* bytes -> int32, keys copied into a pool. Open addressing, power-of-two capacity. */
typedef struct mt__strmap {
    uint64_t *slot_off;   /* (cap,) offset + 1 into pool, 0 = empty */
    uint32_t *slot_len;   /* (cap,) */
    int32_t *slot_val;    /* (cap,) */
    size_t cap, count;
    mt_buf pool;
} mt__strmap;

MT_API void mt__strmap_free(mt__strmap *m) {
    mt_free(m->slot_off); mt_free(m->slot_len); mt_free(m->slot_val); mt_buf_free(&m->pool);
    memset(m, 0, sizeof *m);
}

MT_API mt_status mt__strmap_init(mt__strmap *m, size_t cap) {
    mt_status s;
    memset(m, 0, sizeof *m);
    m->cap = 16;
    while (m->cap < cap * 2) m->cap *= 2;
    s = mt_calloc(m->cap * 8, (void **)&m->slot_off);
    if (s == MT_OK) s = mt_calloc(m->cap * 4, (void **)&m->slot_len);
    if (s == MT_OK) s = mt_calloc(m->cap * 4, (void **)&m->slot_val);
    if (s != MT_OK) mt__strmap_free(m);
    return s;
}

MT_API size_t mt__strmap_find(const mt__strmap *m, const char *k, size_t n) {
    size_t i = (size_t)mt__fnv1a(k, n) & (m->cap - 1);
    for (;;) {
        uint64_t off = m->slot_off[i];
        if (!off) return i;
        if (m->slot_len[i] == n && memcmp(m->pool.data + off - 1, k, n) == 0) return i;
        i = (i + 1) & (m->cap - 1);
    }
}

MT_API int mt__strmap_get(const mt__strmap *m, const char *k, size_t n, int32_t *val) {
    size_t i;
    if (!m->cap) return 0;
    i = mt__strmap_find(m, k, n);
    if (!m->slot_off[i]) return 0;
    *val = m->slot_val[i];
    return 1;
}

MT_API mt_status mt__strmap_put(mt__strmap *m, const char *k, size_t n, int32_t val) {
    size_t i;
    if ((m->count + 1) * 2 > m->cap) { /* grow */
        mt__strmap g;
        size_t j;
        MT_TRY(mt__strmap_init(&g, m->cap));
        mt_buf_free(&g.pool);
        g.pool = m->pool;
        for (j = 0; j < m->cap; j++) {
            if (m->slot_off[j]) {
                size_t t = mt__strmap_find(&g, m->pool.data + m->slot_off[j] - 1, m->slot_len[j]);
                g.slot_off[t] = m->slot_off[j];
                g.slot_len[t] = m->slot_len[j];
                g.slot_val[t] = m->slot_val[j];
            }
        }
        g.count = m->count;
        mt_free(m->slot_off); mt_free(m->slot_len); mt_free(m->slot_val);
        *m = g;
    }
    i = mt__strmap_find(m, k, n);
    if (!m->slot_off[i]) {
        MT_TRY(mt_buf_push(&m->pool, "", 0)); /* ensure a pool exists so offsets start at 1 */
        m->slot_off[i] = m->pool.len + 1;
        m->slot_len[i] = (uint32_t)n;
        MT_TRY(mt_buf_push(&m->pool, k, n));
        m->count++;
    }
    m->slot_val[i] = val;
    return MT_OK;
}

/* (left id, right id) -> (rank, merged id) */
typedef struct mt__pairmap {
    uint64_t *key;   /* (cap,) (left << 32 | right) + 1, 0 = empty */
    int32_t *rank;   /* (cap,) */
    int32_t *merged; /* (cap,) */
    size_t cap, count;
} mt__pairmap;

MT_API void mt__pairmap_free(mt__pairmap *m) { mt_free(m->key); mt_free(m->rank); mt_free(m->merged); memset(m, 0, sizeof *m); }

MT_API mt_status mt__pairmap_init(mt__pairmap *m, size_t n) {
    mt_status s;
    memset(m, 0, sizeof *m);
    m->cap = 16;
    while (m->cap < n * 2 + 16) m->cap *= 2;
    s = mt_calloc(m->cap * 8, (void **)&m->key);
    if (s == MT_OK) s = mt_calloc(m->cap * 4, (void **)&m->rank);
    if (s == MT_OK) s = mt_calloc(m->cap * 4, (void **)&m->merged);
    if (s != MT_OK) mt__pairmap_free(m);
    return s;
}

MT_API size_t mt__pairmap_slot(const mt__pairmap *m, uint64_t k) {
    size_t i = (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & (m->cap - 1);
    while (m->key[i] && m->key[i] != k) i = (i + 1) & (m->cap - 1);
    return i;
}

MT_API int mt__pairmap_get(const mt__pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged) {
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i;
    if (!m->cap) return 0;
    i = mt__pairmap_slot(m, k);
    if (!m->key[i]) return 0;
    *rank = m->rank[i];
    *merged = m->merged[i];
    return 1;
}

/* ------------------------------------------------------------------ tokenizers */

enum { MT_TOK_BYTES = 0, MT_TOK_BPE = 1 };

typedef struct mt_tokenizer {
    int kind;            /* MT_TOK_BYTES or MT_TOK_BPE */
    int64_t vocab_size;  /* ids are in [0, vocab_size) */
    int32_t eod;         /* end-of-document id (-1 when none) */
    int ignore_merges;   /* HF: a word found whole in the vocabulary is one token */
    int32_t byte_id[256];/* BPE: id of each byte's symbol */
    mt__strmap vocab;    /* BPE: symbol (GPT-2 byte-to-unicode text) -> id */
    mt__pairmap merges;  /* BPE */
    char **id_text;      /* (vocab_size,) symbol text of each id, for decoding; NULL entries allowed */
} mt_tokenizer;

/* Per-thread state: a cache of encoded words and scratch space. */
typedef struct mt_tok_state {
    mt__strmap cache;    /* word bytes -> offset into ids */
    mt_i32buf ids;       /* cached ids, each entry: count, then the ids */
    int32_t *sym, *prev, *next;
    int64_t *heap;       /* (rank << 32 | position) */
    size_t scratch_cap;
    mt_buf text;         /* scratch for mapped bytes */
} mt_tok_state;

MT_API void mt_tok_state_free(mt_tok_state *st) {
    mt__strmap_free(&st->cache);
    mt_i32buf_free(&st->ids);
    mt_free(st->sym); mt_free(st->prev); mt_free(st->next); mt_free(st->heap);
    mt_buf_free(&st->text);
    memset(st, 0, sizeof *st);
}

MT_API void mt_tokenizer_close(mt_tokenizer *tk) {
    int64_t i;
    mt__strmap_free(&tk->vocab);
    mt__pairmap_free(&tk->merges);
    if (tk->id_text) {
        for (i = 0; i < tk->vocab_size; i++) mt_free(tk->id_text[i]);
        mt_free(tk->id_text);
    }
    memset(tk, 0, sizeof *tk);
}

MT_API mt_status mt_tokenizer_open_bytes(mt_tokenizer *tk) {
    memset(tk, 0, sizeof *tk);
    tk->kind = MT_TOK_BYTES;
    tk->vocab_size = 257;
    tk->eod = 256;
    return MT_OK;
}

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 upwards. */
MT_API uint32_t mt_gpt2_byte_to_unicode(int b) {
    int n = 0, c;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    for (c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
    return (uint32_t)(256 + n);
}

/* The bytes a token stands for (BPE: its symbol text mapped back through bytes_to_unicode).
 * Returns the count written to out (at most cap), or -1 for an unknown id. */
MT_API int mt_tokenizer_token_bytes(const mt_tokenizer *tk, int32_t id, unsigned char *out, int cap) {
    const unsigned char *s;
    size_t n, i;
    int k = 0;
    if (tk->kind == MT_TOK_BYTES) {
        if (id < 0 || id > 255) return -1;
        if (cap > 0) out[0] = (unsigned char)id;
        return 1;
    }
    if (id < 0 || id >= tk->vocab_size || !tk->id_text || !tk->id_text[id]) return -1;
    s = (const unsigned char *)tk->id_text[id];
    n = strlen(tk->id_text[id]);
    for (i = 0; i < n;) {
        int len, b;
        int32_t cp = mt_utf8_decode(s + i, n - i, &len);
        int found = -1;
        for (b = 0; b < 256; b++)
            if ((int32_t)mt_gpt2_byte_to_unicode(b) == cp) { found = b; break; }
        if (found < 0) return -1; /* a special token: not byte-level text */
        if (k < cap) out[k] = (unsigned char)found;
        k++;
        i += (size_t)len;
    }
    return k;
}

/* Add one merge "left right" (symbol texts) with the given rank. */
MT_API mt_status mt__bpe_add_merge(mt_tokenizer *tk, const char *l, size_t nl, const char *r, size_t nr, int32_t rank,
                                   const char *where) {
    int32_t a, b, m;
    char stack[512];
    char *joined = stack;
    uint64_t k;
    size_t i;
    if (!mt__strmap_get(&tk->vocab, l, nl, &a) || !mt__strmap_get(&tk->vocab, r, nr, &b))
        return mt_errorf(MT_ERR_FORMAT, "%s: merge %d \"%.*s %.*s\" uses a symbol missing from the vocabulary", where, rank,
                         (int)nl, l, (int)nr, r);
    if (nl + nr > sizeof stack) MT_TRY(mt_calloc(nl + nr, (void **)&joined));
    memcpy(joined, l, nl);
    memcpy(joined + nl, r, nr);
    if (!mt__strmap_get(&tk->vocab, joined, nl + nr, &m)) {
        mt_status s = mt_errorf(MT_ERR_FORMAT, "%s: merge %d \"%.*s %.*s\" makes a symbol missing from the vocabulary", where,
                                rank, (int)nl, l, (int)nr, r);
        if (joined != stack) mt_free(joined);
        return s;
    }
    if (joined != stack) mt_free(joined);
    k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    i = mt__pairmap_slot(&tk->merges, k);
    if (!tk->merges.key[i]) { /* the first (lowest-rank) occurrence wins */
        tk->merges.key[i] = k;
        tk->merges.rank[i] = rank;
        tk->merges.merged[i] = m;
        tk->merges.count++;
    }
    return MT_OK;
}

/* Parse a JSON object of "symbol": id pairs at *pp into tk->vocab. */
MT_API mt_status mt__bpe_read_vocab(mt_tokenizer *tk, const char **pp, const char *end, const char *where) {
    const char *p = mt_json_skip_ws(*pp, end);
    mt_buf key;
    mt_status s = MT_OK;
    int first = 1;
    memset(&key, 0, sizeof key);
    if (p >= end || *p != '{') return mt_errorf(MT_ERR_FORMAT, "%s: the vocabulary is not a JSON object", where);
    if (!tk->vocab.cap) MT_TRY(mt__strmap_init(&tk->vocab, 65536));
    p = mt_json_skip_ws(p + 1, end);
    while (s == MT_OK && p < end && *p != '}') {
        char *e;
        long long id;
        if (!first) {
            if (*p != ',') { s = mt_errorf(MT_ERR_FORMAT, "%s: expected ',' in the vocabulary", where); break; }
            p = mt_json_skip_ws(p + 1, end);
        }
        first = 0;
        key.len = 0;
        if (mt_json_string(&p, end, &key) != MT_OK) { s = mt_errorf(MT_ERR_FORMAT, "%s: bad string in the vocabulary", where); break; }
        p = mt_json_skip_ws(p, end);
        if (p >= end || *p != ':') { s = mt_errorf(MT_ERR_FORMAT, "%s: expected ':' in the vocabulary", where); break; }
        p = mt_json_skip_ws(p + 1, end);
        id = strtoll(p, &e, 10);
        if (e == p || id < 0 || id > INT32_MAX - 1) { s = mt_errorf(MT_ERR_FORMAT, "%s: bad id for \"%s\"", where, key.data ? key.data : ""); break; }
        p = mt_json_skip_ws(e, end);
        s = mt__strmap_put(&tk->vocab, key.data ? key.data : "", key.len, (int32_t)id);
        if (id + 1 > tk->vocab_size) tk->vocab_size = id + 1;
    }
    if (s == MT_OK && (p >= end || *p != '}')) s = mt_errorf(MT_ERR_FORMAT, "%s: unterminated vocabulary", where);
    mt_buf_free(&key);
    if (s == MT_OK) *pp = p + 1;
    return s;
}

/* After the vocabulary and merges: byte symbols, decode table, end-of-document id. */
MT_API mt_status mt__bpe_finish(mt_tokenizer *tk, const char *where) {
    int b;
    size_t j;
    for (b = 0; b < 256; b++) {
        char u8[4];
        int n = mt_utf8_encode(mt_gpt2_byte_to_unicode(b), u8);
        if (!mt__strmap_get(&tk->vocab, u8, (size_t)n, &tk->byte_id[b]))
            return mt_errorf(MT_ERR_FORMAT, "%s: byte 0x%02x has no symbol in the vocabulary (not a byte-level BPE)", where, b);
    }
    MT_TRY(mt_calloc((size_t)tk->vocab_size * sizeof(char *), (void **)&tk->id_text));
    for (j = 0; j < tk->vocab.cap; j++) {
        if (tk->vocab.slot_off[j]) {
            int32_t id = tk->vocab.slot_val[j];
            size_t n = tk->vocab.slot_len[j];
            if (id >= 0 && id < tk->vocab_size && !tk->id_text[id]) {
                MT_TRY(mt_calloc(n + 1, (void **)&tk->id_text[id]));
                memcpy(tk->id_text[id], tk->vocab.pool.data + tk->vocab.slot_off[j] - 1, n);
            }
        }
    }
    if (tk->eod < 0) {
        static const char *names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"};
        int i;
        for (i = 0; i < 4 && tk->eod < 0; i++) {
            int32_t id;
            if (mt__strmap_get(&tk->vocab, names[i], strlen(names[i]), &id)) tk->eod = id;
        }
    }
    return MT_OK;
}

/* GPT-2 files in memory: vocab.json text and merges.txt text. */
MT_API mt_status mt_tokenizer_load_gpt2_memory(mt_tokenizer *tk, const char *vocab, size_t nv, const char *merges, size_t nm) {
    const char *p = vocab, *end = vocab + nv, *q, *mend = merges + nm;
    int32_t rank = 0;
    mt_status s;
    memset(tk, 0, sizeof *tk);
    tk->kind = MT_TOK_BPE;
    tk->eod = -1;
    s = mt__bpe_read_vocab(tk, &p, end, "vocab.json");
    if (s == MT_OK) s = mt__pairmap_init(&tk->merges, 65536);
    for (q = merges; s == MT_OK && q < mend;) {
        const char *eol = q, *sp;
        while (eol < mend && *eol != '\n') eol++;
        {
            const char *le = eol;
            if (le > q && le[-1] == '\r') le--;
            if (le > q && !(rank == 0 && le - q >= 8 && memcmp(q, "#version", 8) == 0)) {
                sp = q;
                while (sp < le && *sp != ' ') sp++;
                if (sp >= le) s = mt_errorf(MT_ERR_FORMAT, "merges.txt: line without a space: \"%.*s\"", (int)(le - q), q);
                else {
                    if (tk->merges.count * 2 + 2 > tk->merges.cap) { /* grow */
                        mt__pairmap g;
                        size_t j;
                        s = mt__pairmap_init(&g, tk->merges.cap);
                        for (j = 0; s == MT_OK && j < tk->merges.cap; j++)
                            if (tk->merges.key[j]) {
                                size_t t = mt__pairmap_slot(&g, tk->merges.key[j]);
                                g.key[t] = tk->merges.key[j]; g.rank[t] = tk->merges.rank[j]; g.merged[t] = tk->merges.merged[j];
                            }
                        if (s == MT_OK) { g.count = tk->merges.count; mt__pairmap_free(&tk->merges); tk->merges = g; }
                    }
                    if (s == MT_OK) s = mt__bpe_add_merge(tk, q, (size_t)(sp - q), sp + 1, (size_t)(le - sp - 1), rank, "merges.txt");
                    rank++;
                }
            }
        }
        q = eol + 1;
    }
    if (s == MT_OK) s = mt__bpe_finish(tk, "vocab.json");
    if (s != MT_OK) mt_tokenizer_close(tk);
    return s;
}

MT_API mt_status mt__read_whole(const char *path, mt_buf *out) {
    FILE *f = fopen(path, "rb");
    char tmp[65536];
    size_t n;
    if (!f) return mt_errorf(MT_ERR_IO, "%s: cannot open", path);
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) {
        mt_status s = mt_buf_push(out, tmp, n);
        if (s != MT_OK) { fclose(f); return s; }
    }
    if (ferror(f)) { fclose(f); return mt_errorf(MT_ERR_IO, "%s: read error", path); }
    fclose(f);
    return MT_OK;
}

MT_API mt_status mt_tokenizer_open_gpt2(mt_tokenizer *tk, const char *vocab_json, const char *merges_txt) {
    mt_buf v, m;
    mt_status s;
    memset(&v, 0, sizeof v);
    memset(&m, 0, sizeof m);
    s = mt__read_whole(vocab_json, &v);
    if (s == MT_OK) s = mt__read_whole(merges_txt, &m);
    if (s == MT_OK) s = mt_tokenizer_load_gpt2_memory(tk, v.data ? v.data : "", v.len, m.data ? m.data : "", m.len);
    mt_buf_free(&v);
    mt_buf_free(&m);
    return s;
}

/* A Hugging Face tokenizer.json with "model": {"type": "BPE", "vocab": {...}, "merges": [...]}
 * and a ByteLevel pre-tokenizer (GPT-2 style). added_tokens extend the vocabulary. */
MT_API mt_status mt_tokenizer_open_hf(mt_tokenizer *tk, const char *path) {
    mt_buf f, key, tmp, tmp2;
    const char *p, *end, *merges_at = NULL, *added_at = NULL, *pre_at = NULL, *norm_at = NULL;
    mt_status s;
    int32_t rank = 0;
    memset(tk, 0, sizeof *tk);
    memset(&f, 0, sizeof f); memset(&key, 0, sizeof key); memset(&tmp, 0, sizeof tmp); memset(&tmp2, 0, sizeof tmp2);
    tk->kind = MT_TOK_BPE;
    tk->eod = -1;
    s = mt__read_whole(path, &f);
    if (s != MT_OK) return s;
    p = f.data ? f.data : "";
    end = p + f.len;
#define MT__HF_FAIL(...) do { s = mt_errorf(MT_ERR_FORMAT, __VA_ARGS__); goto done; } while (0)
    p = mt_json_skip_ws(p, end);
    if (p >= end || *p != '{') MT__HF_FAIL("%s: not a JSON object", path);
    p++;
    for (;;) {
        p = mt_json_skip_ws(p, end);
        if (p < end && *p == ',') p = mt_json_skip_ws(p + 1, end);
        if (p >= end) MT__HF_FAIL("%s: unterminated object", path);
        if (*p == '}') break;
        key.len = 0;
        if (mt_json_string(&p, end, &key) != MT_OK) MT__HF_FAIL("%s: bad key", path);
        p = mt_json_skip_ws(p, end);
        if (p >= end || *p != ':') MT__HF_FAIL("%s: expected ':'", path);
        p = mt_json_skip_ws(p + 1, end);
        if (key.data && !strcmp(key.data, "model")) {
            if (*p != '{') MT__HF_FAIL("%s: \"model\" is not an object", path);
            p++;
            for (;;) {
                p = mt_json_skip_ws(p, end);
                if (p < end && *p == ',') p = mt_json_skip_ws(p + 1, end);
                if (p >= end) MT__HF_FAIL("%s: unterminated \"model\"", path);
                if (*p == '}') { p++; break; }
                key.len = 0;
                if (mt_json_string(&p, end, &key) != MT_OK) MT__HF_FAIL("%s: bad key in \"model\"", path);
                p = mt_json_skip_ws(p, end);
                if (p >= end || *p != ':') MT__HF_FAIL("%s: expected ':'", path);
                p = mt_json_skip_ws(p + 1, end);
                if (key.data && !strcmp(key.data, "vocab")) {
                    s = mt__bpe_read_vocab(tk, &p, end, path);
                    if (s != MT_OK) goto done;
                    continue;
                }
                if (key.data && !strcmp(key.data, "type")) {
                    tmp.len = 0;
                    if (mt_json_string(&p, end, &tmp) != MT_OK || !tmp.data || strcmp(tmp.data, "BPE") != 0)
                        MT__HF_FAIL("%s: model.type is \"%s\", only \"BPE\" is supported", path, tmp.data ? tmp.data : "?");
                    continue;
                }
                if (key.data && !strcmp(key.data, "ignore_merges")) {
                    tk->ignore_merges = *p == 't';
                } else if (key.data && !strcmp(key.data, "merges")) {
                    merges_at = p;
                }
                if (mt_json_skip_value(&p, end, 0) != MT_OK) MT__HF_FAIL("%s: bad value in \"model\"", path);
            }
            continue;
        }
        if (key.data && !strcmp(key.data, "added_tokens")) added_at = p;
        if (key.data && !strcmp(key.data, "pre_tokenizer")) pre_at = p;
        if (key.data && !strcmp(key.data, "normalizer")) norm_at = p;
        if (mt_json_skip_value(&p, end, 0) != MT_OK) MT__HF_FAIL("%s: bad value for \"%s\"", path, key.data ? key.data : "");
    }
    if (!tk->vocab.cap) MT__HF_FAIL("%s: no model.vocab", path);
    if (norm_at && !(end - norm_at >= 4 && !memcmp(norm_at, "null", 4)))
        MT__HF_FAIL("%s: a normalizer is set; only GPT-2 style byte-level BPE without one is supported", path);
    if (pre_at) {
        const char *q = pre_at, *qe = pre_at;
        if (mt_json_skip_value(&qe, end, 0) != MT_OK) MT__HF_FAIL("%s: bad pre_tokenizer", path);
        /* accept {"type": "ByteLevel", ...} only */
        {
            int ok = 0;
            const char *t = q;
            while (t + 11 < qe) {
                if (!memcmp(t, "\"ByteLevel\"", 11)) ok = 1;
                if (!memcmp(t, "\"Split\"", 7) || !memcmp(t, "\"Digits\"", 8) || !memcmp(t, "\"Metaspace\"", 11)) { ok = 0; break; }
                t++;
            }
            if (!ok) MT__HF_FAIL("%s: pre_tokenizer is not GPT-2's ByteLevel (only that regex is implemented)", path);
        }
    }
    /* added tokens: {"id": N, "content": "..."} */
    if (added_at) {
        const char *q = mt_json_skip_ws(added_at, end);
        if (*q != '[') MT__HF_FAIL("%s: added_tokens is not an array", path);
        q = mt_json_skip_ws(q + 1, end);
        while (q < end && *q != ']') {
            long long id = -1;
            if (*q == ',') { q = mt_json_skip_ws(q + 1, end); continue; }
            if (*q != '{') MT__HF_FAIL("%s: bad added_tokens entry", path);
            q++;
            tmp.len = 0;
            for (;;) {
                q = mt_json_skip_ws(q, end);
                if (q < end && *q == ',') q = mt_json_skip_ws(q + 1, end);
                if (q >= end) MT__HF_FAIL("%s: unterminated added_tokens", path);
                if (*q == '}') { q++; break; }
                key.len = 0;
                if (mt_json_string(&q, end, &key) != MT_OK) MT__HF_FAIL("%s: bad added_tokens key", path);
                q = mt_json_skip_ws(q, end);
                if (q >= end || *q != ':') MT__HF_FAIL("%s: expected ':'", path);
                q = mt_json_skip_ws(q + 1, end);
                if (key.data && !strcmp(key.data, "id")) id = strtoll(q, NULL, 10);
                if (key.data && !strcmp(key.data, "content")) {
                    if (mt_json_string(&q, end, &tmp) != MT_OK) MT__HF_FAIL("%s: bad added token", path);
                    continue;
                }
                if (mt_json_skip_value(&q, end, 0) != MT_OK) MT__HF_FAIL("%s: bad added_tokens value", path);
            }
            if (id < 0 || id > INT32_MAX - 1) MT__HF_FAIL("%s: added token without a valid id", path);
            s = mt__strmap_put(&tk->vocab, tmp.data ? tmp.data : "", tmp.len, (int32_t)id);
            if (s != MT_OK) goto done;
            if (id + 1 > tk->vocab_size) tk->vocab_size = id + 1;
            q = mt_json_skip_ws(q, end);
        }
    }
    /* merges: ["a b", ...] or [["a", "b"], ...] */
    s = mt__pairmap_init(&tk->merges, 4 * (size_t)tk->vocab_size + 1024);
    if (s != MT_OK) goto done;
    if (merges_at) {
        const char *q = mt_json_skip_ws(merges_at, end);
        if (*q != '[') MT__HF_FAIL("%s: model.merges is not an array", path);
        q = mt_json_skip_ws(q + 1, end);
        while (q < end && *q != ']') {
            if (*q == ',') { q = mt_json_skip_ws(q + 1, end); continue; }
            tmp.len = 0;
            tmp2.len = 0;
            if (*q == '"') {
                const char *sp;
                if (mt_json_string(&q, end, &tmp) != MT_OK || !tmp.data) MT__HF_FAIL("%s: bad merge %d", path, rank);
                sp = strchr(tmp.data, ' ');
                if (!sp) MT__HF_FAIL("%s: merge %d \"%s\" has no space", path, rank, tmp.data);
                s = mt__bpe_add_merge(tk, tmp.data, (size_t)(sp - tmp.data), sp + 1, tmp.len - (size_t)(sp - tmp.data) - 1, rank, path);
            } else if (*q == '[') {
                q = mt_json_skip_ws(q + 1, end);
                if (mt_json_string(&q, end, &tmp) != MT_OK) MT__HF_FAIL("%s: bad merge %d", path, rank);
                q = mt_json_skip_ws(q, end);
                if (q >= end || *q != ',') MT__HF_FAIL("%s: bad merge %d", path, rank);
                q = mt_json_skip_ws(q + 1, end);
                if (mt_json_string(&q, end, &tmp2) != MT_OK) MT__HF_FAIL("%s: bad merge %d", path, rank);
                q = mt_json_skip_ws(q, end);
                if (q >= end || *q != ']') MT__HF_FAIL("%s: bad merge %d", path, rank);
                q++;
                s = mt__bpe_add_merge(tk, tmp.data ? tmp.data : "", tmp.len, tmp2.data ? tmp2.data : "", tmp2.len, rank, path);
            } else {
                MT__HF_FAIL("%s: bad merge %d", path, rank);
            }
            if (s != MT_OK) goto done;
            rank++;
            q = mt_json_skip_ws(q, end);
        }
    }
    s = mt__bpe_finish(tk, path);
#undef MT__HF_FAIL
done:
    mt_buf_free(&f);
    mt_buf_free(&key);
    mt_buf_free(&tmp);
    mt_buf_free(&tmp2);
    if (s != MT_OK) mt_tokenizer_close(tk);
    return s;
}

/* ------------------------------------------------------------------ encoding */

MT_API void mt__heap_push(int64_t *h, size_t *n, int64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t par = (i - 1) / 2;
        if (h[par] <= v) break;
        h[i] = h[par];
        i = par;
    }
    h[i] = v;
}
MT_API int64_t mt__heap_pop(int64_t *h, size_t *n) {
    int64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = v;
    return top;
}

/* BPE of one pre-token (raw bytes) appended to out. */
MT_API mt_status mt__bpe_word(const mt_tokenizer *tk, mt_tok_state *st, const unsigned char *w, size_t n, mt_i32buf *out) {
    size_t i, nh = 0;
    int32_t id, rank, merged;
    if (tk->ignore_merges) {
        char u8[4];
        st->text.len = 0;
        for (i = 0; i < n; i++) {
            int k = mt_utf8_encode(mt_gpt2_byte_to_unicode(w[i]), u8);
            MT_TRY(mt_buf_push(&st->text, u8, (size_t)k));
        }
        if (mt__strmap_get(&tk->vocab, st->text.data, st->text.len, &id)) return mt_i32buf_push(out, id);
    }
    if (n > st->scratch_cap) {
        size_t c = n * 2;
        mt_free(st->sym); mt_free(st->prev); mt_free(st->next); mt_free(st->heap);
        st->sym = st->prev = st->next = NULL;
        st->heap = NULL;
        st->scratch_cap = 0;
        MT_TRY(mt_calloc(c * sizeof(int32_t), (void **)&st->sym));
        MT_TRY(mt_calloc(c * sizeof(int32_t), (void **)&st->prev));
        MT_TRY(mt_calloc(c * sizeof(int32_t), (void **)&st->next));
        MT_TRY(mt_calloc(c * 4 * sizeof(int64_t), (void **)&st->heap));
        st->scratch_cap = c;
    }
    for (i = 0; i < n; i++) {
        st->sym[i] = tk->byte_id[w[i]];
        st->prev[i] = (int32_t)i - 1;
        st->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (i = 0; i + 1 < n; i++)
        if (mt__pairmap_get(&tk->merges, st->sym[i], st->sym[i + 1], &rank, &merged))
            mt__heap_push(st->heap, &nh, ((int64_t)rank << 32) | (int64_t)i);
    while (nh > 0) {
        int64_t top = mt__heap_pop(st->heap, &nh);
        int32_t pos = (int32_t)(top & 0xffffffff), r = (int32_t)(top >> 32), nx, pv;
        if (st->sym[pos] < 0) continue; /* merged away */
        nx = st->next[pos];
        if (nx < 0) continue;
        if (!mt__pairmap_get(&tk->merges, st->sym[pos], st->sym[nx], &rank, &merged) || rank != r) continue; /* stale */
        st->sym[pos] = merged;
        st->sym[nx] = -1;
        st->next[pos] = st->next[nx];
        if (st->next[nx] >= 0) st->prev[st->next[nx]] = pos;
        pv = st->prev[pos];
        if (nh + 2 > st->scratch_cap * 4) continue; /* cannot happen: at most 2 pushes per merge */
        if (pv >= 0 && mt__pairmap_get(&tk->merges, st->sym[pv], st->sym[pos], &rank, &merged))
            mt__heap_push(st->heap, &nh, ((int64_t)rank << 32) | (int64_t)pv);
        if (st->next[pos] >= 0 && mt__pairmap_get(&tk->merges, st->sym[pos], st->sym[st->next[pos]], &rank, &merged))
            mt__heap_push(st->heap, &nh, ((int64_t)rank << 32) | (int64_t)pos);
    }
    for (i = 0; i < n; i = (size_t)st->next[i]) {
        MT_TRY(mt_i32buf_push(out, st->sym[i]));
        if (st->next[i] < 0) break;
    }
    return MT_OK;
}

/* Append the ids of text[0..n) to out. Thread-safe for distinct `st`. */
MT_API mt_status mt_tokenizer_encode(const mt_tokenizer *tk, mt_tok_state *st, const char *text, size_t n, mt_i32buf *out) {
    size_t i = 0;
    if (tk->kind == MT_TOK_BYTES) {
        MT_TRY(mt_i32buf_reserve(out, n));
        for (i = 0; i < n; i++) out->data[out->len++] = (unsigned char)text[i];
        return MT_OK;
    }
    if (!st->cache.cap) MT_TRY(mt__strmap_init(&st->cache, 1 << 16));
    while (i < n) {
        size_t e = mt_gpt2_pretoken_end(text, n, i), len = e - i;
        int32_t at;
        if (len <= 64 && mt__strmap_get(&st->cache, text + i, len, &at)) {
            int32_t cnt = st->ids.data[at], k;
            MT_TRY(mt_i32buf_reserve(out, (size_t)cnt));
            for (k = 0; k < cnt; k++) out->data[out->len++] = st->ids.data[at + 1 + k];
        } else {
            size_t before = out->len;
            MT_TRY(mt__bpe_word(tk, st, (const unsigned char *)text + i, len, out));
            if (len <= 64) {
                size_t k, cnt = out->len - before;
                if (st->cache.count > (1u << 20) || st->ids.len > (64u << 20)) { /* bound the cache */
                    mt__strmap_free(&st->cache);
                    st->ids.len = 0;
                    MT_TRY(mt__strmap_init(&st->cache, 1 << 16));
                }
                MT_TRY(mt__strmap_put(&st->cache, text + i, len, (int32_t)st->ids.len));
                MT_TRY(mt_i32buf_push(&st->ids, (int32_t)cnt));
                for (k = 0; k < cnt; k++) MT_TRY(mt_i32buf_push(&st->ids, out->data[before + k]));
            }
        }
        i = e;
    }
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_TOKENIZER_H */
