#!/bin/sh
# Our xs client against Xen's C xenstored, over the socket and /dev/xen/xenbus:
# every operation, a watch, a transaction that loses a conflict, permissions.
XENSTORED_PATH=/run/xenstored/socket /lab/bin/xs.test -test.run '^TestLab' -test.v >/tmp/xs-test.out 2>&1
rc=$?
sed 's/^/  /' /tmp/xs-test.out
if [ $rc -eq 0 ]; then
	echo "LAB RESULT xenstore-client PASS transports=socket,xenbus xenstored=C"
else
	echo "LAB RESULT xenstore-client FAIL reason=go-test-exit-$rc"
fi
