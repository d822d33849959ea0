package applets

import (
	"bytes"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func runMain(argv ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main(argv, strings.NewReader(""), &out, &errb, "1.2.3", "abc123")
	return code, out.String(), errb.String()
}

func TestNoArgumentsListsEveryApplet(t *testing.T) {
	for _, argv := range [][]string{{"pvusb"}, {"pvusb", "--help"}, {"/usr/local/bin/pvusb", "-h"}} {
		code, out, _ := runMain(argv...)
		if code != 0 {
			t.Errorf("%v: exit %d", argv, code)
		}
		for _, c := range All() {
			if !strings.Contains(out, c.Name) || !strings.Contains(out, c.Usage) {
				t.Errorf("%v: applet %s and its summary not listed:\n%s", argv, c.Name, out)
			}
		}
	}
}

func TestVersionPrintsVersionAndCommit(t *testing.T) {
	code, out, _ := runMain("pvusb", "--version")
	if code != 0 || out != "pvusb 1.2.3 (commit abc123)\n" {
		t.Errorf("exit %d, %q", code, out)
	}
}

func TestDispatchOnArgv0AndArgv1(t *testing.T) {
	// A symlink named after the applet, and `pvusb APPLET`, reach the same applet.
	for _, argv := range [][]string{{"/usr/bin/ringdump", "--help"}, {"pvusb", "ringdump", "--help"}, {"./ringdump", "-h"}} {
		code, out, _ := runMain(argv...)
		if code != 0 || !strings.Contains(out, "decode and explain a usbif ring page") || !strings.Contains(out, "EXAMPLES:") {
			t.Errorf("%v: exit %d\n%s", argv, code, out)
		}
	}
	if got := dispatchArgs(&cli.App{Name: Name, Commands: All()}, []string{"/x/ringdump", "a"}); strings.Join(got, " ") != "pvusb ringdump a" {
		t.Errorf("symlink dispatch %v", got)
	}
}

func TestUnknownAppletAndFailures(t *testing.T) {
	code, _, errOut := runMain("pvusb", "nosuch")
	if code != 2 || !strings.Contains(errOut, `no applet "nosuch"`) {
		t.Errorf("unknown applet: exit %d, %q", code, errOut)
	}
	code, _, errOut = runMain("pvusb", "ringdump", "/nonexistent/page.bin")
	if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "pvusb: ") {
		t.Errorf("failing applet: exit %d, %q", code, errOut)
	}
}

func TestEveryAppletHasHelpWithExamples(t *testing.T) {
	for _, c := range All() {
		if c.Usage == "" || !strings.Contains(c.CustomHelpTemplate, "EXAMPLES:") {
			t.Errorf("applet %s lacks a summary or examples", c.Name)
		}
	}
}
