package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// notImplementedCmds returns the commands that the specification promises
// but that do not exist yet. They are listed in --help so that the command
// line is stable, and each one fails honestly with exit code 2.
func notImplementedCmds() []*cobra.Command {
	stubs := []struct{ use, short string }{
		{"reencrypt", "Re-encrypt rows written under old key versions (not implemented yet)"},
		{"encrypt-existing", "Encrypt a table's existing plaintext in place (not implemented yet)"},
	}
	cmds := make([]*cobra.Command, 0, len(stubs))
	for _, s := range stubs {
		name := s.use
		cmds = append(cmds, &cobra.Command{
			Use:   name,
			Short: s.short,
			// Accept any flags and arguments: whatever the user typed, the
			// answer is the same.
			DisableFlagParsing: true,
			RunE: func(*cobra.Command, []string) error {
				return &exitError{code: exitUsageErr, err: fmt.Errorf("pgcloak: %s is not implemented yet", name)}
			},
		})
	}
	return cmds
}
