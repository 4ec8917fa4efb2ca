package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

// version is the release this binary was built from; set it with
// go build -ldflags "-X main.version=v0.1.0".
var version = "dev"

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the pgcloak version and the Go version it was built with",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprint(cmd.OutOrStdout(), versionText())
			return nil
		},
	}
}

// versionText is what "pgcloak version" and "pgcloak --version" print.
func versionText() string {
	return fmt.Sprintf("pgcloak %s\n%s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// noArgs rejects positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError(cmd, fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args))
	}
	return nil
}
