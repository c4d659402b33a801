/* tests/test_train_cli.c — the sample trainer's command line: bad input gets a clear message and a
 * non-zero exit (never a crash), and a short run prints the documented per-iteration line.
 * Runs ./build/train_gpt (built by `make test` before the tests run) from the repository root. */
#define _POSIX_C_SOURCE 200809L
#include "megatron.h"
#include "mt_test.h"
#include <sys/wait.h>

/* Run the trainer with `args`; return its exit status (-1 if it died on a signal) and its output. */
static int run_trainer(const char *args, char *out, size_t cap) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 ./build/train_gpt %s 2>&1", args);
    FILE *p = popen(cmd, "r");
    if (!p) return -2;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void expect_error(const char *args, const char *needle) {
    static char out[1 << 16];
    int rc = run_trainer(args, out, sizeof out);
    MT_EXPECT(rc > 0, "'%s' should exit non-zero without crashing, got %d", args, rc);
    MT_EXPECT(strstr(out, needle) != NULL, "'%s' should say '%s'; said: %.300s", args, needle, out);
}

static void test_cli_bad_input(void) {
    expect_error("--no-such-flag 3", "unknown flag '--no-such-flag'");
    expect_error("--num-layers", "--num-layers needs a value");
    expect_error("--num-layers 0", "--num-layers");
    expect_error("--hidden-size -5", "--hidden-size needs an integer >= 1, got '-5'");
    expect_error("--tp-comm-chunks 0", "--tp-comm-chunks needs an integer >= 1, got '0'");
    expect_error("--tp-comm-sm-margin -1", "--tp-comm-sm-margin needs an integer >= 0, got '-1'");
    expect_error("--micro-batch-size abc", "got 'abc'");
    expect_error("--lr -1", "--lr needs a number in");
    expect_error("--hidden-size 30 --num-attention-heads 4", "hidden size 30 is not divisible by the number of heads 4");
    expect_error("--data-path does/not/exist", "does/not/exist");
    expect_error("--data-path", "--data-path needs a value");
    expect_error("--seq-length 64 --max-position-embeddings 32", "exceeds --max-position-embeddings 32");
    expect_error("--global-batch-size 10 --micro-batch-size 4", "not divisible by --micro-batch-size 4 x data-parallel size 1");
    expect_error("--lr-decay-style weird", "bad value 'weird' for --lr-decay-style");
}

static void test_cli_short_run(void) {
    static char out[1 << 16];
    int rc = run_trainer("--train-iters 3 --num-layers 1 --hidden-size 16 --num-attention-heads 2 --seq-length 24 "
                         "--micro-batch-size 2 --global-batch-size 4 --eval-iters 3", out, sizeof out);
    MT_EXPECT(rc == 0, "short run exit %d: %.500s", rc, out);
    MT_EXPECT(strstr(out, "iteration      1/     3") && strstr(out, "iteration      3/     3"), "iteration lines: %.500s", out);
    const char *l = strstr(out, "lm loss: ");
    double loss = l ? atof(l + 9) : 0;
    MT_EXPECT(l && loss > 1.0 && loss < 4.0, "first loss %g near ln(12) = 2.48", loss);
    /* at least 6 significant digits: d.dddddE+dd */
    MT_EXPECT(l && l[10] == '.' && l[17] == 'E', "loss printed as d.ddddddE+dd: %.20s", l ? l : "");
    MT_EXPECT(strstr(out, "tokens/s: ") && strstr(out, "(ms): "), "elapsed ms and tokens/s printed");
    MT_EXPECT(strstr(out, "held-out accuracy: ") && strstr(out, "of 6 held-out strings"), "held-out accuracy over 3 batches of 2 reported");
    /* the GPU's GEMM tuning file on the CPU: said, not read, not written */
    rc = run_trainer("--train-iters 1 --num-layers 1 --hidden-size 16 --num-attention-heads 2 --seq-length 24 "
                     "--gemm-tune-file build/test_cli.tune", out, sizeof out);
    FILE *f = fopen("build/test_cli.tune", "rb");
    MT_EXPECT(rc == 0 && strstr(out, "--gemm-tune-file is for GPU GEMMs") && !f, "CPU run with a tune file: exit %d, %.300s",
              rc, out);
    if (f) fclose(f);
}

/* Train end to end from a Megatron indexed dataset written with mt/data.h's writer. */
static void test_cli_indexed_dataset(void) {
    static char out[1 << 16];
    mt_indexed_writer w;
    int32_t doc[300];
    MT_CHECK(mt_indexed_writer_open(&w, "build/test_cli_data", MT_IDX_U16));
    for (int d = 0; d < 200; d++) {  /* documents of a repeating pattern: learnable */
        int n = 20 + d % 50;
        for (int i = 0; i < n; i++) doc[i] = (int32_t)((d + i * 3) % 40);
        MT_CHECK(mt_indexed_writer_add_sequence(&w, doc, n));
        MT_CHECK(mt_indexed_writer_end_document(&w));
    }
    MT_CHECK(mt_indexed_writer_finish(&w));
    int rc = run_trainer("--data-path build/test_cli_data --vocab-size 40 --train-iters 30 --num-layers 1 "
                         "--hidden-size 32 --num-attention-heads 2 --seq-length 32 --micro-batch-size 4 "
                         "--lr 1e-2 --eval-interval 15 --eval-iters 2 --split 90,10,0", out, sizeof out);
    MT_EXPECT(rc == 0, "training from build/test_cli_data: exit %d: %.600s", rc, out);
    MT_EXPECT(strstr(out, "loader wait (ms): "), "loader time reported: %.300s", out);
    const char *v1 = strstr(out, "validation loss at iteration 15 | lm loss: ");
    const char *v2 = strstr(out, "validation loss at iteration 30 | lm loss: ");
    MT_EXPECT(v1 && v2, "validation passes at 15 and 30: %.600s", out);
    if (v1 && v2) {
        double l1 = atof(v1 + 43), l2 = atof(v2 + 43);
        MT_EXPECT(l2 < l1 && l2 < 0.8 * log(40.0), "validation loss falls: %.4f -> %.4f", l1, l2);
    }
    MT_EXPECT(system("rm -f build/test_cli_data.bin build/test_cli_data.idx build/test_cli_data-*.mtidx") == 0, "clean up");
}

/* The lm loss of each iteration line in `out` (up to `max`). */
static int read_losses(const char *out, double *loss, int max) {
    int n = 0;
    for (const char *p = strstr(out, "lm loss: "); p && n < max; p = strstr(p + 1, "lm loss: "))
        if (p > out + 2 && strncmp(p - 2, "| ", 2) == 0 && strstr(p, "grad norm")) loss[n++] = atof(p + 9);
    return n;
}

/* Ranks as CPU threads: data, tensor and sequence parallelism and every sharding strategy give the
 * losses of one rank for the same global batch. */
static void test_cli_parallel_threads(void) {
    static char out[1 << 16];
    double ref[8], got[8];
    const char *base = "--train-iters 4 --num-layers 1 --hidden-size 32 --num-attention-heads 2 --seq-length 24 "
                       "--micro-batch-size 2 --global-batch-size 8 --eval-iters 2 --lr 1e-2";
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s --world-size 1", base);
    MT_EXPECT(run_trainer(cmd, out, sizeof out) == 0, "world 1: %.300s", out);
    int n = read_losses(out, ref, 8);
    MT_EXPECT(n == 4, "4 iterations at world 1, read %d", n);
    const char *layouts[] = {
        "--world-size 2", "--world-size 4",
        "--world-size 2 --tensor-model-parallel-size 2",
        "--world-size 2 --tensor-model-parallel-size 2 --sequence-parallel",
        "--world-size 2 --tensor-model-parallel-size 2 --sequence-parallel --tp-comm-chunks 5",
        "--world-size 4 --tensor-model-parallel-size 2 --use-distributed-optimizer",
        "--world-size 2 --use-distributed-optimizer --no-dp-comm-overlap",
        "--world-size 2 --ddp-bucket-size 3000",
        "--world-size 4 --data-parallel-sharding-strategy optim_grads",
        "--world-size 4 --data-parallel-sharding-strategy optim_grads_params",
    };
    for (size_t k = 0; k < sizeof layouts / sizeof layouts[0]; k++) {
        snprintf(cmd, sizeof cmd, "%s %s", base, layouts[k]);
        MT_EXPECT(run_trainer(cmd, out, sizeof out) == 0, "%s: %.300s", layouts[k], out);
        MT_EXPECT(strstr(out, "data parallel ") != NULL, "ranks line printed");
        MT_EXPECT(strstr(out, "held-out accuracy: ") != NULL, "%s: every rank evaluates", layouts[k]);
        int m = read_losses(out, got, 8);
        MT_EXPECT(m == n, "%s printed %d iterations", layouts[k], m);
        for (int i = 0; i < m && i < n; i++) MT_EXPECT_REL(got[i], ref[i], 1e-5, 1e-12);
    }
    expect_error("--world-size 3 --tensor-model-parallel-size 2", "world size 3 is not divisible by --tensor-model-parallel-size 2");
    expect_error("--world-size 2 --micro-batch-size 4 --global-batch-size 12", "not divisible by --micro-batch-size 4 x data-parallel size 2");
}

int main(void) {
    MT_RUN(test_cli_bad_input);
    MT_RUN(test_cli_short_run);
    MT_RUN(test_cli_indexed_dataset);
    MT_RUN(test_cli_parallel_threads);
    return mt_test_summary("test_train_cli");
}
