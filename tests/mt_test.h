/* tests/mt_test.h — the tiny harness every test file uses.
 *
 *   static void test_roundtrip(void) { MT_EXPECT(x == 1, "x is %d", x); }
 *   int main(void) { MT_RUN(test_roundtrip); return mt_test_summary("test_core"); }
 *
 * A test passes when none of its expectations failed; a test that checked nothing fails.
 * Each binary ends with "<name>: N passed, N failed"; `make test` adds them up.
 */
#ifndef MT_TEST_H
#define MT_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <math.h>

static int mt_test_n_passed, mt_test_n_failed, mt_test_cur_failed, mt_test_cur_checks;

#define MT_EXPECT(cond, ...)                                                  \
    do {                                                                      \
        mt_test_cur_checks++;                                                 \
        if (!(cond)) {                                                        \
            if (mt_test_cur_failed < 5) {                                     \
                fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
                fprintf(stderr, __VA_ARGS__);                                 \
                fprintf(stderr, "\n");                                        \
            }                                                                 \
            mt_test_cur_failed++;                                             \
        }                                                                     \
    } while (0)

/* |a - b| / max(|b|, floor) <= tol */
#define MT_EXPECT_REL(a, b, tol, floor_)                                                        \
    do {                                                                                        \
        double mt__a = (double)(a), mt__b = (double)(b);                                        \
        double mt__d = fabs(mt__a - mt__b) / fmax(fabs(mt__b), (floor_));                       \
        MT_EXPECT(mt__d <= (tol), "%s = %.10g vs %s = %.10g (rel %.3g > %.3g)", #a, mt__a, #b, \
                  mt__b, mt__d, (double)(tol));                                                 \
    } while (0)

static void mt_test_run(const char *name, void (*fn)(void)) {
    mt_test_cur_failed = 0;
    mt_test_cur_checks = 0;
    fn();
    if (mt_test_cur_checks == 0) {
        fprintf(stderr, "  FAIL %s: checked nothing\n", name);
        mt_test_cur_failed = 1;
    }
    if (mt_test_cur_failed) {
        mt_test_n_failed++;
        printf("  FAIL %s (%d of %d checks failed)\n", name, mt_test_cur_failed, mt_test_cur_checks);
    } else {
        mt_test_n_passed++;
        printf("  ok   %s (%d checks)\n", name, mt_test_cur_checks);
    }
    fflush(stdout);
}
#define MT_RUN(fn) mt_test_run(#fn, fn)

static int mt_test_summary(const char *binary) {
    printf("%s: %d passed, %d failed\n", binary, mt_test_n_passed, mt_test_n_failed);
    return mt_test_n_failed ? 1 : 0;
}
#endif
