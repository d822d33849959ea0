# lib.sh: what the scenarios that run a domU share; they source it
# (. "$(dirname "$0")/lib.sh") after setting LOG, the domU's console log.
# Not a scenario itself: test.sh runs only the scenarios it names.
ts() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(ts)" 'BEGIN{printf "%.1f", b-a}'; } # seconds since uptime $1
waitfor() { # pattern timeout_s: until the domU's console says it
	i=0
	while ! grep -aq "$1" $LOG 2>/dev/null && [ $i -lt $(($2 * 5)) ]; do sleep 0.2; i=$((i + 1)); done
	grep -aq "$1" $LOG 2>/dev/null
}
facts=""
note() { facts="$facts $1"; } # a key=value for the scenario's RESULT line
mbps() { # the key=values of a "DOMU RESULT" line -> "write read" MB/s
	echo "$1" | awk '{for(i=1;i<=NF;i++){split($i,kv,"="); v[kv[1]]=kv[2]} if (v["write_s"]>0 && v["read_s"]>0) printf "%.3f %.3f", v["size_mib"]*1.048576/v["write_s"], v["size_mib"]*1.048576/v["read_s"]}'
}
ratio() { # "write read" MB/s [prefix] -> ratios to qusb-reference in this boot, when it ran
	[ -s /tmp/qusb.mbps ] && [ -n "$1" ] && echo "$1 $(cat /tmp/qusb.mbps)" |
		awk -v p="${2:+${2}_}" '{printf "%swrite_ratio_vs_qusb=%.2f %sread_ratio_vs_qusb=%.2f", p, $1/$3, p, $2/$4}'
}
