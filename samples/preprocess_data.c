/* samples/preprocess_data.c — text to a Megatron indexed dataset (.bin/.idx), like Megatron's
 * tools/preprocess_data.py, with the same output bytes for the same tokens.
 *
 *   ./build/preprocess_data --input corpus.jsonl --output-prefix data/corpus \
 *       --tokenizer-type GPT2BPETokenizer --vocab-file gpt2-vocab.json --merge-file gpt2-merges.txt \
 *       --append-eod --workers 8
 *   -> data/corpus_text_document.bin, data/corpus_text_document.idx   (then --data-path data/corpus_text_document)
 *
 * Input
 *   JSONL (--input-format jsonl, the default for *.json / *.jsonl): one JSON object per line; the
 *   string under each --json-keys key (default "text") is one document (an array of strings is a
 *   document of several sequences, as Megatron treats a pre-split document). Blank lines are skipped.
 *   Plain text (--input-format text, the default for other names): one document per line
 *   (a trailing \r is dropped; blank lines are skipped).
 *
 * Tokenizers (--tokenizer-type)
 *   GPT2BPETokenizer      --vocab-file vocab.json --merge-file merges.txt (end of document: <|endoftext|>)
 *   HuggingFaceTokenizer  --tokenizer-file tokenizer.json (BPE model, GPT-2 ByteLevel pre-tokenizer)
 *   ByteLevel             bytes are ids 0..255, end of document 256
 *
 * Output, as Megatron writes it: <prefix>_<key>_document.{bin,idx}; uint16 tokens when the
 * vocabulary has fewer than 65500 entries, else int32; one sequence per document (or per array
 * item); --append-eod adds the end-of-document id to every non-empty document; an empty text
 * gives an empty document. Files are written under temporary names and renamed at the end.
 *
 * Other flags: --workers N (threads; default: CPUs), --log-interval N (documents between
 * progress lines), --eod-id N (override), --chunk-bytes N (input bytes per worker task, default
 * 4 MiB). Throughput (input MB/s) is printed at the end.
 */
#include "mt/data.h"
#include "mt/tokenizer.h"

#define PP_MAX_KEYS 8

typedef struct pp_args {
    const char *input, *output_prefix, *tokenizer_type, *vocab_file, *merge_file, *tokenizer_file, *input_format;
    const char *keys[PP_MAX_KEYS];
    int n_keys, append_eod, workers, eod_id;
    long long log_interval, chunk_bytes;
} pp_args;

/* What one worker produced for its chunk of lines, per key. */
typedef struct pp_out {
    mt_i32buf tokens;   /* all tokens, back to back */
    mt_i32buf seq_lens; /* sequence lengths */
    mt_i32buf doc_seqs; /* sequences per document */
} pp_out;

typedef struct pp_worker {
    const pp_args *args;
    const mt_tokenizer *tk;
    mt_tok_state st;
    const char *begin, *end;   /* the chunk: whole lines */
    long long first_line;      /* 1-based line number of `begin` */
    pp_out out[PP_MAX_KEYS];
    mt_buf text;
    long long docs;
    mt_status status;
    char error[512];
    pthread_t thread;
    int started;
} pp_worker;

static void pp_usage(void) {
    fprintf(stderr,
            "usage: preprocess_data --input FILE --output-prefix PREFIX\n"
            "         [--tokenizer-type GPT2BPETokenizer|HuggingFaceTokenizer|ByteLevel]\n"
            "         [--vocab-file vocab.json --merge-file merges.txt | --tokenizer-file tokenizer.json]\n"
            "         [--append-eod] [--workers N] [--json-keys text ...] [--input-format jsonl|text]\n"
            "         [--log-interval N] [--eod-id N]\n");
}

static int pp_parse_args(int argc, char **argv, pp_args *a) {
    int i;
    memset(a, 0, sizeof *a);
    a->tokenizer_type = "GPT2BPETokenizer";
    a->eod_id = -1;
    a->log_interval = 100000;
    for (i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define PP_VAL(name, field) if (!strcmp(f, name)) { if (!v) { fprintf(stderr, "%s needs a value\n", f); return 0; } a->field = v; i++; continue; }
        PP_VAL("--input", input)
        PP_VAL("--output-prefix", output_prefix)
        PP_VAL("--tokenizer-type", tokenizer_type)
        PP_VAL("--vocab-file", vocab_file)
        PP_VAL("--merge-file", merge_file)
        PP_VAL("--tokenizer-file", tokenizer_file)
        PP_VAL("--tokenizer-model", tokenizer_file)
        PP_VAL("--input-format", input_format)
#undef PP_VAL
        if (!strcmp(f, "--append-eod")) { a->append_eod = 1; continue; }
        if (!strcmp(f, "--workers") && v) { a->workers = atoi(v); i++; continue; }
        if (!strcmp(f, "--log-interval") && v) { a->log_interval = atoll(v); i++; continue; }
        if (!strcmp(f, "--eod-id") && v) { a->eod_id = atoi(v); i++; continue; }
        if (!strcmp(f, "--chunk-bytes") && v) { a->chunk_bytes = atoll(v); i++; continue; }
        if (!strcmp(f, "--json-keys")) {
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                if (a->n_keys == PP_MAX_KEYS) { fprintf(stderr, "at most %d --json-keys\n", PP_MAX_KEYS); return 0; }
                a->keys[a->n_keys++] = argv[++i];
            }
            continue;
        }
        if (!strcmp(f, "--partitions") || !strcmp(f, "--split-sentences") || !strcmp(f, "--keep-newlines")) {
            fprintf(stderr, "note: %s is not supported and is ignored\n", f);
            if (!strcmp(f, "--partitions") && v) i++;
            continue;
        }
        fprintf(stderr, "unknown argument %s\n", f);
        return 0;
    }
    if (!a->input || !a->output_prefix) return 0;
    if (a->n_keys == 0) { a->keys[0] = "text"; a->n_keys = 1; }
    if (!a->input_format)
        a->input_format = (mt__ends_with(a->input, ".json") || mt__ends_with(a->input, ".jsonl")) ? "jsonl" : "text";
    if (strcmp(a->input_format, "jsonl") && strcmp(a->input_format, "text")) {
        fprintf(stderr, "--input-format %s: expected jsonl or text\n", a->input_format);
        return 0;
    }
    if (!strcmp(a->input_format, "text") && (a->n_keys != 1 || strcmp(a->keys[0], "text"))) {
        fprintf(stderr, "--json-keys applies to JSONL input only\n");
        return 0;
    }
    if (a->workers <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        a->workers = n > 0 ? (int)n : 1;
    }
    if (a->workers > 256) a->workers = 256;
    if (a->chunk_bytes <= 0) a->chunk_bytes = 4 << 20;
    return 1;
}

/* Tokenize one text into the key's output as one sequence (empty texts add nothing). */
static mt_status pp_add_sequence(pp_worker *w, pp_out *o, const char *text, size_t n, int *n_seqs) {
    size_t before = o->tokens.len;
    MT_TRY(mt_tokenizer_encode(w->tk, &w->st, text, n, &o->tokens));
    if (o->tokens.len > before) {
        MT_TRY(mt_i32buf_push(&o->seq_lens, (int32_t)(o->tokens.len - before)));
        (*n_seqs)++;
    }
    return MT_OK;
}

static mt_status pp_end_document(pp_worker *w, pp_out *o, int n_seqs) {
    if (n_seqs > 0 && w->args->append_eod) { /* Megatron: the last sequence of a non-empty document gets the EOD */
        MT_TRY(mt_i32buf_push(&o->tokens, w->tk->eod));
        o->seq_lens.data[o->seq_lens.len - 1]++;
    }
    return mt_i32buf_push(&o->doc_seqs, n_seqs);
}

/* One JSONL line: find each key, tokenize its string (or array of strings). */
static mt_status pp_json_line(pp_worker *w, const char *p, const char *end, long long line) {
    int k, found[PP_MAX_KEYS] = {0}, nseq[PP_MAX_KEYS] = {0};
    mt_buf key;
    memset(&key, 0, sizeof key);
#define PP_BAD(...) do { snprintf(w->error, sizeof w->error, __VA_ARGS__); mt_buf_free(&key); return MT_ERR_FORMAT; } while (0)
    p = mt_json_skip_ws(p, end);
    if (p >= end || *p != '{') PP_BAD("line %lld: not a JSON object", line);
    p++;
    for (;;) {
        p = mt_json_skip_ws(p, end);
        if (p < end && *p == ',') p = mt_json_skip_ws(p + 1, end);
        if (p >= end) PP_BAD("line %lld: unterminated JSON object", line);
        if (*p == '}') break;
        key.len = 0;
        if (mt_json_string(&p, end, &key) != MT_OK) PP_BAD("line %lld: bad JSON key", line);
        p = mt_json_skip_ws(p, end);
        if (p >= end || *p != ':') PP_BAD("line %lld: expected ':' after \"%s\"", line, key.data ? key.data : "");
        p = mt_json_skip_ws(p + 1, end);
        for (k = 0; k < w->args->n_keys; k++)
            if (key.data && !strcmp(key.data, w->args->keys[k]) && !found[k]) break;
        if (k == w->args->n_keys) {
            if (mt_json_skip_value(&p, end, 0) != MT_OK) PP_BAD("line %lld: bad JSON value", line);
            continue;
        }
        found[k] = 1;
        if (*p == '"') {
            w->text.len = 0;
            if (mt_json_string(&p, end, &w->text) != MT_OK) PP_BAD("line %lld: bad JSON string under \"%s\"", line, w->args->keys[k]);
            if (pp_add_sequence(w, &w->out[k], w->text.data ? w->text.data : "", w->text.len, &nseq[k]) != MT_OK)
                PP_BAD("line %lld: out of memory", line);
        } else if (*p == '[') {
            p = mt_json_skip_ws(p + 1, end);
            while (p < end && *p != ']') {
                if (*p == ',') { p = mt_json_skip_ws(p + 1, end); continue; }
                w->text.len = 0;
                if (mt_json_string(&p, end, &w->text) != MT_OK) PP_BAD("line %lld: \"%s\" holds a non-string", line, w->args->keys[k]);
                if (pp_add_sequence(w, &w->out[k], w->text.data ? w->text.data : "", w->text.len, &nseq[k]) != MT_OK)
                    PP_BAD("line %lld: out of memory", line);
                p = mt_json_skip_ws(p, end);
            }
            if (p >= end) PP_BAD("line %lld: unterminated array", line);
            p++;
        } else {
            PP_BAD("line %lld: \"%s\" is not a string or an array of strings", line, w->args->keys[k]);
        }
    }
    for (k = 0; k < w->args->n_keys; k++) {
        if (!found[k]) PP_BAD("line %lld: no key \"%s\"", line, w->args->keys[k]);
        if (pp_end_document(w, &w->out[k], nseq[k]) != MT_OK) PP_BAD("line %lld: out of memory", line);
    }
#undef PP_BAD
    mt_buf_free(&key);
    return MT_OK;
}

static void *pp_worker_main(void *arg) {
    pp_worker *w = (pp_worker *)arg;
    const char *p = w->begin;
    long long line = w->first_line;
    int jsonl = !strcmp(w->args->input_format, "jsonl");
    while (p < w->end && w->status == MT_OK) {
        const char *eol = (const char *)memchr(p, '\n', (size_t)(w->end - p)), *le, *q;
        if (!eol) eol = w->end;
        le = eol;
        if (le > p && le[-1] == '\r') le--;
        for (q = p; q < le && (*q == ' ' || *q == '\t'); q++) {}
        if (q < le) { /* not blank */
            if (jsonl) {
                w->status = pp_json_line(w, p, le, line);
            } else {
                int n = 0;
                w->status = pp_add_sequence(w, &w->out[0], p, (size_t)(le - p), &n);
                if (w->status == MT_OK) w->status = pp_end_document(w, &w->out[0], n);
                if (w->status != MT_OK) snprintf(w->error, sizeof w->error, "line %lld: out of memory", line);
            }
            w->docs++;
        }
        p = eol + 1;
        line++;
    }
    return NULL;
}

static int pp_main(int argc, char **argv) {
    pp_args a;
    mt_tokenizer tk;
    mt__map in;
    mt_indexed_writer wr[PP_MAX_KEYS];
    pp_worker *workers = NULL;
    char prefix[4096];
    int k, i, dtype, ok = 1;
    double t0 = mt__now_ms();
    long long docs = 0, tokens = 0, line = 1, next_log;
    size_t pos = 0, chunk;
    mt_status s;

    if (!pp_parse_args(argc, argv, &a)) { pp_usage(); return 2; }
    chunk = (size_t)a.chunk_bytes;
    if (!strcmp(a.tokenizer_type, "GPT2BPETokenizer")) {
        if (!a.vocab_file || !a.merge_file) { fprintf(stderr, "GPT2BPETokenizer needs --vocab-file and --merge-file\n"); return 2; }
        s = mt_tokenizer_open_gpt2(&tk, a.vocab_file, a.merge_file);
    } else if (!strcmp(a.tokenizer_type, "HuggingFaceTokenizer")) {
        if (!a.tokenizer_file) { fprintf(stderr, "HuggingFaceTokenizer needs --tokenizer-file\n"); return 2; }
        s = mt_tokenizer_open_hf(&tk, a.tokenizer_file);
    } else if (!strcmp(a.tokenizer_type, "ByteLevel")) {
        s = mt_tokenizer_open_bytes(&tk);
    } else {
        fprintf(stderr, "--tokenizer-type %s: expected GPT2BPETokenizer, HuggingFaceTokenizer or ByteLevel\n", a.tokenizer_type);
        return 2;
    }
    if (s != MT_OK) return 1;
    if (a.eod_id >= 0) tk.eod = a.eod_id;
    if (a.append_eod && (tk.eod < 0 || tk.eod >= tk.vocab_size)) {
        fprintf(stderr, "--append-eod: the tokenizer has no end-of-document token (give --eod-id)\n");
        mt_tokenizer_close(&tk);
        return 2;
    }
    dtype = mt_idx_optimal_dtype(tk.vocab_size);
    if (mt__map_open(&in, a.input) != MT_OK) { mt_tokenizer_close(&tk); return 1; }
    for (k = 0; k < a.n_keys; k++) {
        snprintf(prefix, sizeof prefix, "%s_%s_document", a.output_prefix, a.keys[k]);
        if (mt_indexed_writer_open(&wr[k], prefix, dtype) != MT_OK) {
            while (k-- > 0) mt_indexed_writer_abort(&wr[k]);
            mt__map_close(&in);
            mt_tokenizer_close(&tk);
            return 1;
        }
    }
    fprintf(stderr, "preprocess: %s (%.1f MB, %s) -> %s_*_document with %d workers, vocabulary %lld (%s tokens)\n", a.input,
            in.size / 1e6, a.input_format, a.output_prefix, a.workers, (long long)tk.vocab_size, mt_idx_dtype_name(dtype));
    workers = (pp_worker *)calloc((size_t)a.workers, sizeof(pp_worker));
    if (!workers) ok = 0;
    for (i = 0; ok && i < a.workers; i++) { workers[i].args = &a; workers[i].tk = &tk; }
    next_log = a.log_interval;
    while (ok && pos < in.size) {
        int used = 0;
        /* hand each worker a chunk of whole lines */
        for (i = 0; i < a.workers && pos < in.size; i++) {
            pp_worker *w = &workers[i];
            const char *b = (const char *)in.data + pos, *e;
            size_t want = in.size - pos < chunk ? in.size - pos : chunk;
            const char *nl = (const char *)memchr(b + want - 1, '\n', in.size - pos - (want - 1));
            e = nl ? nl + 1 : (const char *)in.data + in.size;
            w->begin = b;
            w->end = e;
            w->first_line = line;
            { const char *c; for (c = b; (c = (const char *)memchr(c, '\n', (size_t)(e - c))) != NULL; c++) line++; }
            w->status = MT_OK;
            w->docs = 0;
            for (k = 0; k < a.n_keys; k++) { w->out[k].tokens.len = 0; w->out[k].seq_lens.len = 0; w->out[k].doc_seqs.len = 0; }
            pos = (size_t)(e - (const char *)in.data);
            used++;
        }
        for (i = 0; i < used; i++) {
            workers[i].started = pthread_create(&workers[i].thread, NULL, pp_worker_main, &workers[i]) == 0;
            if (!workers[i].started) pp_worker_main(&workers[i]); /* no thread: do it here */
        }
        for (i = 0; i < used; i++)
            if (workers[i].started) pthread_join(workers[i].thread, NULL);
        /* write in input order */
        for (i = 0; ok && i < used; i++) {
            pp_worker *w = &workers[i];
            if (w->status != MT_OK) {
                fprintf(stderr, "%s: %s\n", a.input, w->error[0] ? w->error : mt_status_str(w->status));
                ok = 0;
                break;
            }
            for (k = 0; ok && k < a.n_keys; k++) {
                pp_out *o = &w->out[k];
                size_t d, sq = 0, off = 0;
                for (d = 0; ok && d < o->doc_seqs.len; d++) {
                    int j;
                    for (j = 0; ok && j < o->doc_seqs.data[d]; j++, sq++) {
                        ok = mt_indexed_writer_add_sequence(&wr[k], o->tokens.data + off, o->seq_lens.data[sq]) == MT_OK;
                        off += (size_t)o->seq_lens.data[sq];
                    }
                    if (ok) ok = mt_indexed_writer_end_document(&wr[k]) == MT_OK;
                }
                tokens += (long long)o->tokens.len;
            }
            docs += w->docs;
        }
        if (docs >= next_log) {
            double sec = (mt__now_ms() - t0) / 1e3;
            fprintf(stderr, "preprocess: %lld documents, %lld tokens, %.1f MB/s\n", docs, tokens, pos / 1e6 / (sec > 0 ? sec : 1e-9));
            next_log = docs + a.log_interval;
        }
    }
    for (k = 0; k < a.n_keys; k++) {
        if (ok) ok = mt_indexed_writer_finish(&wr[k]) == MT_OK;
        else mt_indexed_writer_abort(&wr[k]);
    }
    if (ok) {
        double sec = (mt__now_ms() - t0) / 1e3;
        if (sec <= 0) sec = 1e-9;
        fprintf(stderr, "preprocess: done: %lld documents, %lld tokens in %.2f s: %.1f MB/s, %.2f M tokens/s\n", docs, tokens, sec,
                in.size / 1e6 / sec, tokens / 1e6 / sec);
    } else {
        fprintf(stderr, "preprocess: failed; nothing was written\n");
    }
    for (i = 0; workers && i < a.workers; i++) {
        mt_tok_state_free(&workers[i].st);
        mt_buf_free(&workers[i].text);
        for (k = 0; k < PP_MAX_KEYS; k++) {
            mt_i32buf_free(&workers[i].out[k].tokens);
            mt_i32buf_free(&workers[i].out[k].seq_lens);
            mt_i32buf_free(&workers[i].out[k].doc_seqs);
        }
    }
    free(workers);
    mt__map_close(&in);
    mt_tokenizer_close(&tk);
    return ok ? 0 : 1;
}

#ifndef PREPROCESS_NO_MAIN
int main(int argc, char **argv) { return pp_main(argc, argv); }
#endif
