// Package applets is pvusb's multi-call front door: the table of applets
// and the busybox-style dispatch on argv[0], else argv[1].
package applets

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/pvusb/pvusb/applets/bench"
	"github.com/pvusb/pvusb/applets/demo"
	"github.com/pvusb/pvusb/applets/ringdump"
	"github.com/pvusb/pvusb/applets/sim"
	"github.com/pvusb/pvusb/applets/usbback"
	"github.com/pvusb/pvusb/applets/usbfront"
	"github.com/pvusb/pvusb/applets/vportctl"
)

// Name is the binary's name, whatever it was invoked as.
const Name = "pvusb"

// All returns the applets in the order `pvusb --help` lists them. Only
// applets that work are listed; a duplicate name panics at start.
func All() []*cli.Command {
	cmds := []*cli.Command{
		demo.Command(),
		usbback.Command(),
		usbfront.Command(),
		vportctl.Command(),
		sim.Command(),
		ringdump.Command(),
		bench.Command(),
	}
	seen := map[string]bool{}
	for _, c := range cmds {
		if seen[c.Name] {
			panic("applets: duplicate applet " + c.Name)
		}
		seen[c.Name] = true
	}
	return cmds
}

// Main runs pvusb with argv and the given streams and returns the exit
// status: 0 on success, 1 when an applet fails, 2 for a usage error.
func Main(argv []string, stdin io.Reader, stdout, stderr io.Writer, version, commit string) int {
	status := 0
	app := &cli.App{
		Name:                 Name,
		Usage:                "paravirtualized USB for Xen: backend, frontend and tools in one binary",
		Version:              version,
		Commands:             All(),
		Reader:               stdin,
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		Suggest:              true,
		HideHelpCommand:      true,
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(stderr, "%s: no applet %q; `%s --help` lists them\n", Name, name, Name)
			status = 2
		},
		// Errors are printed once, by Main, as one line.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	cli.VersionPrinter = func(c *cli.Context) {
		fmt.Fprintf(c.App.Writer, "%s %s (commit %s)\n", Name, version, commit)
	}
	err := app.Run(dispatchArgs(app, argv))
	if status != 0 {
		return status
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", Name, err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// usageError marks errors in how pvusb was called.
type usageError interface{ Usage() bool }

// dispatchArgs turns "ringdump x" (a symlink named after an applet) into
// "pvusb ringdump x"; "pvusb ringdump x" passes through.
func dispatchArgs(app *cli.App, argv []string) []string {
	if len(argv) == 0 {
		return []string{app.Name}
	}
	base := filepath.Base(argv[0])
	if base != app.Name && app.Command(base) != nil {
		return append([]string{app.Name, base}, argv[1:]...)
	}
	return append([]string{app.Name}, argv[1:]...)
}
