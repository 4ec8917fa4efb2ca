package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/pgcloak/pgcloak/config"
	"github.com/rs/zerolog"
)

func init() {
	// Durations in log lines carry their unit: "retry_in":"2s",
	// "timeout":"30s", never a bare number of milliseconds. zerolog keeps
	// the format in a package variable; the binary sets it once, before
	// any logger exists.
	zerolog.DurationFieldFormat = zerolog.DurationFormatString
}

// newLogger builds the operational logger described by the log section:
// JSON lines, or a human-readable console format, written to w.
func newLogger(c config.Log, w io.Writer) (zerolog.Logger, error) {
	levelName := c.Level
	if levelName == "" {
		levelName = "info"
	}
	level, err := zerolog.ParseLevel(levelName)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("log.level: %w", err)
	}
	switch c.Format {
	case "", "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: !isTerminal(w)}
	default:
		return zerolog.Nop(), fmt.Errorf("log.format: unknown format %q (want json or console)", c.Format)
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), nil
}

// isTerminal reports whether w is a terminal, where colour helps.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}
