// Package help gives every applet the same --help layout: urfave/cli's
// command help followed by an EXAMPLES block.
package help

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// WithExamples sets cmd's help template to the standard one plus the
// examples, one per line, and returns cmd.
func WithExamples(cmd *cli.Command, examples ...string) *cli.Command {
	var b strings.Builder
	b.WriteString(cli.CommandHelpTemplate)
	b.WriteString("EXAMPLES:\n")
	for _, e := range examples {
		b.WriteString("   " + e + "\n")
	}
	cmd.CustomHelpTemplate = b.String()
	return cmd
}
