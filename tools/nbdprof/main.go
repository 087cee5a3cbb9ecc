// Command nbdprof captures a CPU profile from a running nbdring while a load
// generator drives it, and prints the top functions, the share of time in system
// calls versus Go code versus the Go runtime, and a diff against an earlier profile.
// The analysis is in package tools/profile; this file is flags and wiring.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nbdring/nbdring/tools/profile"
)

func main() {
	flag.Usage = usage
	flag.Parse()
	if flag.NArg() == 0 {
		usage()
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	var err error
	args := flag.Args()[1:]
	switch flag.Arg(0) {
	case "capture":
		err = captureCmd(ctx, args)
	case "top":
		err = topCmd(args)
	case "diff":
		err = diffCmd(args)
	case "session":
		err = sessionCmd(ctx, args)
	default:
		fmt.Fprintf(os.Stderr, "nbdprof: unknown command %q\n", flag.Arg(0))
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nbdprof:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  nbdprof capture [-url http://localhost:6061] [-seconds 10] [-n 20] -o FILE.pb.gz
  nbdprof top [-n 20] FILE.pb.gz
  nbdprof diff [-n 20] BASE.pb.gz NEW.pb.gz
  nbdprof session -server BIN -image FILE -load "CMD ... {uri} ..." [-seconds 10]
                  [-warmup 2s] -o DIR [-base OLD.pb.gz] [-n 20]

capture talks to a server started with -pprof HOST:PORT. session starts the server
itself on a unix socket and replaces {uri} in the load command with its NBD URI.
A sample counts as "syscall" when a system call entry is on its stack, "runtime"
when its leaf is in the Go runtime, and "go code" otherwise.
Run 'nbdprof COMMAND -h' for a command's flags.
`)
}

func captureCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("capture", flag.ExitOnError)
	rawURL := fs.String("url", "http://localhost:6061", "the server's -pprof address")
	seconds := fs.Int("seconds", 10, "length of the CPU profile")
	out := fs.String("o", "", "file to save the profile in (required)")
	n := fs.Int("n", 20, "functions to list")
	_ = fs.Parse(args)
	if *out == "" || fs.NArg() != 0 {
		return fmt.Errorf("capture needs -o FILE.pb.gz and no other arguments")
	}
	base, err := profile.BaseURL(*rawURL)
	if err != nil {
		return err
	}
	r, err := profile.Capture(ctx, base, *seconds, *out, os.Stdout)
	if err != nil {
		return err
	}
	fmt.Println()
	profile.WriteSummary(os.Stdout, r)
	fmt.Println()
	profile.WriteTop(os.Stdout, r, *n)
	return nil
}

func topCmd(args []string) error {
	fs := flag.NewFlagSet("top", flag.ExitOnError)
	n := fs.Int("n", 20, "functions to list")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("top needs one profile file: nbdprof top [-n 20] FILE.pb.gz")
	}
	r, err := load(fs.Arg(0))
	if err != nil {
		return err
	}
	profile.WriteSummary(os.Stdout, r)
	fmt.Println()
	profile.WriteTop(os.Stdout, r, *n)
	return nil
}

func diffCmd(args []string) error {
	fs := flag.NewFlagSet("diff", flag.ExitOnError)
	n := fs.Int("n", 20, "functions to list")
	_ = fs.Parse(args)
	if fs.NArg() != 2 {
		return fmt.Errorf("diff needs two profile files: nbdprof diff [-n 20] BASE NEW")
	}
	base, err := load(fs.Arg(0))
	if err != nil {
		return err
	}
	cur, err := load(fs.Arg(1))
	if err != nil {
		return err
	}
	profile.WriteDiff(os.Stdout, base, cur, *n)
	return nil
}

func sessionCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("session", flag.ExitOnError)
	var cfg profile.SessionConfig
	fs.StringVar(&cfg.Server, "server", "bin/nbdring", "the nbdring binary")
	fs.StringVar(&cfg.Image, "image", "", "file or device the server serves (required)")
	fs.StringVar(&cfg.Load, "load", "", "load command; {uri} becomes the server's NBD URI")
	fs.IntVar(&cfg.Seconds, "seconds", 10, "length of the CPU profile")
	fs.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "load time before the capture")
	fs.StringVar(&cfg.OutDir, "o", "", "directory for cpu.pb.gz, report.txt and logs")
	fs.StringVar(&cfg.Base, "base", "", "earlier profile to diff against")
	fs.IntVar(&cfg.Top, "n", 20, "functions to list")
	_ = fs.Parse(args)
	if fs.NArg() != 0 {
		return fmt.Errorf("session takes flags only; quote the load command: -load \"...\"")
	}
	return profile.RunSession(ctx, cfg, os.Stdout)
}

func load(path string) (*profile.Report, error) {
	p, err := profile.Load(path)
	if err != nil {
		return nil, err
	}
	r, err := profile.Analyze(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}
