// Package sim is the `pvusb sim` applet: the simulated Xen hypervisor.
package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/pvusb/pvusb/applets/help"
	"github.com/pvusb/pvusb/core/sim"
)

// Command returns the applet.
func Command() *cli.Command {
	return help.WithExamples(&cli.Command{
		Name:  "sim",
		Usage: "run the simulated Xen hypervisor: XenStore, grants and event channels over real shared memory",
		Description: "Serves, in DIR:\n" +
			"  xenstored.sock        dom0's XenStore (the real wire protocol; Debian's xenstore-* tools\n" +
			"                        work with XENSTORED_PATH=DIR/xenstored.sock)\n" +
			"  sim.sock              the hypervisor: a process joins as domain N by connecting here\n" +
			"                        and handing over its RAM and grant table (memfds); pvusb applets\n" +
			"                        join with --sim DIR --domid N (Go code: sim.Join(DIR, N))\n" +
			"  xenstored-domN.sock   the XenStore of domain N, created when N joins\n" +
			"Domains joining and leaving are logged; a domain that dies has its channels, mappings\n" +
			"and XenStore connections released and @releaseDomain fires. Stops on SIGINT/SIGTERM.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Required: true, Usage: "directory for the sockets (created if missing)"},
			&cli.BoolFlag{Name: "debug", Usage: "log at debug level"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, c.App.ErrWriter, config{dir: c.String("dir"), debug: c.Bool("debug")}, nil)
		},
	},
		"pvusb sim --dir /run/pvusb-sim &",
		"XENSTORED_PATH=/run/pvusb-sim/xenstored.sock xenstore-ls /",
		"pvusb usbback -c rules.toml   # with sim = DIR in rules.toml it joins as dom0",
	)
}

type config struct {
	dir   string
	debug bool
}

// run serves until ctx ends; ready, if set, is called once the sockets exist.
func run(ctx context.Context, logw io.Writer, cfg config, ready func(*sim.Hypervisor)) error {
	level := slog.LevelInfo
	if cfg.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level}))
	h, err := sim.NewHypervisor(cfg.dir, log)
	if err != nil {
		return fmt.Errorf("start simulator in %s: %w", cfg.dir, err)
	}
	log.Info("sim: serving", "dir", cfg.dir, "xenstore", sim.XenStorePath(cfg.dir, 0))
	if ready != nil {
		ready(h)
	}
	return h.Serve(ctx)
}
