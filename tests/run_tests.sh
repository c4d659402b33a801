#!/bin/sh
# Run test binaries, add up their "N passed, N failed" lines, print the total last.
# An argument starting with @ is a shell command that counts as one test (exit 0 = pass).
# A binary that dies without its summary line counts as one failure.
passed=0; failed=0
for t in "$@"; do
    case "$t" in
    @*) cmd=${t#@}
        echo "== $cmd"
        if sh -c "$cmd" >/tmp/mt_cmd.$$ 2>&1; then passed=$((passed + 1)); echo "  ok   $cmd"
        else failed=$((failed + 1)); cat /tmp/mt_cmd.$$; echo "  FAIL $cmd"; fi
        rm -f /tmp/mt_cmd.$$
        continue ;;
    esac
    echo "== $t"
    out=$("./$t" 2>&1); rc=$?
    echo "$out"
    line=$(echo "$out" | grep -E '^[A-Za-z0-9_/.-]+: [0-9]+ passed, [0-9]+ failed$' | tail -n 1)
    if [ -z "$line" ]; then
        echo "  FAIL $t exited with status $rc before its summary"; failed=$((failed + 1)); continue
    fi
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')
    f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "  FAIL $t exited with status $rc"; fi
    passed=$((passed + p)); failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
