#!/bin/sh
# Our gntdev/gntalloc and evtchn implementations on real Xen, in dom0:
# pages granted to dom0 itself and mapped back (read-only and writable, a
# writable map of a read-only grant refused), grant copy, a loopback
# event channel notified both ways with the masking rule checked.
ok=PASS
why=""
for t in grant evtchn; do
	/lab/bin/$t.test -test.run '^TestLab' -test.v >/tmp/$t-test.out 2>&1
	rc=$?
	sed "s/^/  $t: /" /tmp/$t-test.out
	[ $rc -eq 0 ] || { ok=FAIL; why="$why$t-exit-$rc,"; }
done
echo "LAB RESULT grant-evtchn $ok${why:+ reason=$why}"
