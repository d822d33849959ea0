// Package ringdump is the `pvusb ringdump` applet: it decodes a saved usbif
// ring page and explains it.
package ringdump

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pvusb/pvusb/applets/help"
	"github.com/pvusb/pvusb/core/ringview"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/ring"
)

// Command returns the applet.
func Command() *cli.Command {
	return help.WithExamples(&cli.Command{
		Name:      "ringdump",
		Usage:     "decode and explain a usbif ring page (urb or conn ring)",
		ArgsUsage: "[FILE|-]  |  --live --domid N [--devid D] [--watch]",
		Description: "Reads one 4096-byte ring page from FILE (or standard input) and prints the header\n" +
			"indices and what they mean, every request still waiting for an answer, every response\n" +
			"still in the page, and every anomaly: producer overflow, more than 16 segments, a\n" +
			"segment crossing its page, reserved bits, unknown ports, bad conn-ring data.\n" +
			"The kind comes from --kind, else the file name (*.urb.bin, *.conn.bin), else a guess.\n" +
			"With --live (dom0 on real Xen), it finds the vusb's ring references in XenStore, maps\n" +
			"both rings read-only through /dev/xen/gntdev and explains them; --watch prints a new\n" +
			"frame whenever the pages change.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kind", Usage: "ring kind: urb or conn (default: from the file name, else guessed)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of text"},
			&cli.IntFlag{Name: "ports", Value: usbif.MaxPorts, Usage: "the vusb's num-ports, to flag unknown ports (1..31)"},
			&cli.BoolFlag{Name: "live", Usage: "map a running vusb's rings read-only (real Xen, dom0) instead of reading a file"},
			&cli.UintFlag{Name: "domid", Usage: "with --live: the frontend's domain"},
			&cli.UintFlag{Name: "devid", Usage: "with --live: the vusb device id"},
			&cli.BoolFlag{Name: "watch", Usage: "with --live: print a new frame whenever the rings change"},
			&cli.DurationFlag{Name: "interval", Value: 200 * time.Millisecond, Usage: "with --watch: how often to look"},
			&cli.IntFlag{Name: "frames", Usage: "with --watch: stop after this many frames (0: until interrupted)"},
		},
		Action: func(c *cli.Context) error {
			if c.Bool("live") {
				if !c.IsSet("domid") {
					return fmt.Errorf("--live needs --domid")
				}
				src, err := openXenSource(uint32(c.Uint("domid")), uint32(c.Uint("devid")))
				if err != nil {
					return err
				}
				defer src.Close()
				ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
				defer stop()
				return runLive(ctx, c.App.Writer, src, liveConfig{json: c.Bool("json"), watch: c.Bool("watch"),
					interval: c.Duration("interval"), frames: c.Int("frames")})
			}
			if c.NArg() > 1 {
				return fmt.Errorf("ringdump takes one FILE, got %d", c.NArg())
			}
			return run(c.App.Reader, c.App.Writer, config{
				file: c.Args().First(), kind: c.String("kind"), json: c.Bool("json"), ports: c.Int("ports"),
			})
		},
	},
		"pvusb ringdump testdata/rings/enumerate.urb.bin",
		"pvusb ringdump --kind conn --json page.bin | jq .responses",
		"cat page.bin | pvusb ringdump --ports 8 -",
		"pvusb ringdump --live --domid 3 --devid 0            # dom0, real Xen",
		"pvusb ringdump --live --domid 3 --watch --json | jq -c '.urb.requests | length'",
	)
}

type config struct {
	file  string // "" or "-" = standard input
	kind  string
	json  bool
	ports int
}

func run(stdin io.Reader, stdout io.Writer, cfg config) error {
	name := cfg.file
	in := stdin
	if name == "" || name == "-" {
		name = "standard input"
	} else {
		f, err := os.Open(cfg.file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	page, err := readPage(in, name)
	if err != nil {
		return err
	}
	kind, note := ringview.Kind(cfg.kind), "given by --kind"
	switch {
	case cfg.kind != "" && kind != ringview.KindURB && kind != ringview.KindConn:
		return fmt.Errorf("--kind %q: want urb or conn", cfg.kind)
	case cfg.kind != "":
	case kindFromName(cfg.file) != "":
		kind, note = kindFromName(cfg.file), "from the file name"
	default:
		var why string
		kind, why = ringview.Guess(page)
		note = "guessed: " + why
	}
	d, err := ringview.Analyze(page, kind, cfg.ports)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if cfg.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(d)
	}
	return d.WriteText(stdout, note)
}

// readPage reads exactly one page; anything shorter or longer is an error
// that says which.
func readPage(r io.Reader, name string) ([]byte, error) {
	buf := make([]byte, ring.PageSize+1)
	n, err := io.ReadFull(r, buf)
	switch {
	case err == io.EOF || (err == nil && n == 0):
		return nil, fmt.Errorf("%s is empty: a ring page is exactly %d bytes", name, ring.PageSize)
	case err == io.ErrUnexpectedEOF && n < ring.PageSize:
		return nil, fmt.Errorf("%s is truncated: %d bytes, a ring page is exactly %d", name, n, ring.PageSize)
	case err == io.ErrUnexpectedEOF:
		return buf[:ring.PageSize], nil
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return nil, fmt.Errorf("%s is oversized: more than %d bytes, a ring page is exactly %d", name, ring.PageSize, ring.PageSize)
}

func kindFromName(file string) ringview.Kind {
	base := filepath.Base(file)
	switch {
	case strings.Contains(base, ".urb"):
		return ringview.KindURB
	case strings.Contains(base, ".conn"):
		return ringview.KindConn
	}
	return ""
}
