// Command pvusb is paravirtualized USB for Xen in one static binary:
// `pvusb APPLET …`, or a symlink named after the applet.
package main

import (
	"os"

	"github.com/pvusb/pvusb/applets"
)

// Set by build.sh with -ldflags -X.
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	os.Exit(applets.Main(os.Args, os.Stdin, os.Stdout, os.Stderr, version, commit))
}
