#!/bin/sh
# Runs inside dom0: each requested scenario (all when none is named), each
# under a timeout, and makes sure every requested scenario prints exactly
# one "LAB RESULT <name> PASS|FAIL key=value..." line.
all="xenstore-client grant-evtchn qusb-reference ringdump-live pvusb-backend pvusb-host pvusb-frontend"
optional="" # scenarios that run only when named
want=${*:-$all}
for s in $want; do
	case " $all $optional " in *" $s "*) ;; *) echo "LAB RESULT $s FAIL reason=unknown-scenario" ;; esac
done
has() { case " $want " in *" $1 "*) return 0 ;; esac; return 1; }
run() { # script timeout: run it, keep its output in /tmp/lab-<script>.log
	out=/tmp/lab-$1.log
	timeout "$2" sh /lab/scenarios/$1.sh "$want" >"$out" 2>&1
	rc=$?
	grep -a '^LAB ' "$out"
	[ $rc -eq 0 ] || echo "LAB note $1 exited $rc"
}
has xenstore-client && run xenstore-client 120
has grant-evtchn && run grant-evtchn 120
{ has qusb-reference || has ringdump-live; } && run qusb 300
has pvusb-backend && run pvusb-backend 300
has pvusb-host && run pvusb-host 400
has pvusb-frontend && run pvusb-frontend 500
for s in $want; do
	case " $all $optional " in *" $s "*) ;; *) continue ;; esac
	grep -aq "^LAB RESULT $s " /tmp/lab-*.log 2>/dev/null || echo "LAB RESULT $s FAIL reason=no-result-timeout"
done
