package main

import (
	"fmt"
	"log"
	"strconv"
	"strings"
	"time"
)

// controlUsage is what an unknown command is answered with (in the log).
const controlUsage = "commands: cut | eio-read OFF LEN | eio-write OFF LEN | " +
	"enospc-after BYTES | enospc-off | fsync-fail N | delay-us N | " +
	"no-fallocate on|off | no-punch on|off | clear"

// delayMax bounds delay-us: a slower device than this is a hung one, and
// the kernel's FUSE requests are not interruptible while they sleep.
const delayMax = time.Second

// control runs the commands of one write to .control, one a line. An
// error names the line that failed; the lines before it took effect.
func (d *disk) control(text string) error {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if err := d.command(f); err != nil {
			return fmt.Errorf("faultfs: %q: %v (%s)", line, err, controlUsage)
		}
		log.Printf("faultfs: %s", line)
	}
	return nil
}

func (d *disk) command(f []string) error {
	nums, err := numbers(f[1:])
	if err != nil {
		return err
	}
	want := map[string]int{"cut": 0, "eio-read": 2, "eio-write": 2, "enospc-after": 1,
		"enospc-off": 0, "fsync-fail": 1, "delay-us": 1, "no-fallocate": 1, "no-punch": 1,
		"clear": 0}
	n, ok := want[f[0]]
	if !ok {
		return fmt.Errorf("unknown command")
	}
	if len(f)-1 != n {
		return fmt.Errorf("takes %d arguments", n)
	}
	if (f[0] == "no-fallocate" || f[0] == "no-punch") && f[1] != "on" && f[1] != "off" {
		return fmt.Errorf("takes on or off")
	}
	if f[0] == "cut" {
		log.Printf("faultfs: power cut: %d unsynced pages dropped", d.powerCut())
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	fl := &d.faults
	switch f[0] {
	case "eio-read", "eio-write":
		ranges := &fl.eioRead
		if f[0] == "eio-write" {
			ranges = &fl.eioWrite
		}
		if len(*ranges) == eioRangesMax {
			return fmt.Errorf("at most %d ranges; clear first", eioRangesMax)
		}
		*ranges = append(*ranges, span{nums[0], nums[0] + nums[1]})
	case "enospc-after":
		fl.enospc, fl.enospcLeft = true, nums[0]
	case "enospc-off":
		fl.enospc = false
	case "fsync-fail":
		fl.fsyncFail = int(nums[0])
	case "delay-us":
		if time.Duration(nums[0])*time.Microsecond > delayMax {
			return fmt.Errorf("at most %v", delayMax)
		}
		fl.delay = time.Duration(nums[0]) * time.Microsecond
	case "no-fallocate":
		fl.noFallocate = f[1] == "on"
	case "no-punch":
		fl.noPunch = f[1] == "on"
	case "clear":
		*fl = faults{}
	}
	return nil
}

// numbers parses the arguments that are numbers; on and off pass.
func numbers(args []string) ([]int64, error) {
	var out []int64
	for _, a := range args {
		if a == "on" || a == "off" {
			continue
		}
		n, err := strconv.ParseInt(a, 0, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not a non-negative number", a)
		}
		out = append(out, n)
	}
	return out, nil
}

// status is what a read of .control returns: the faults in force and the
// counters, one "name value" a line.
func (d *disk) status() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	fl, c := &d.faults, &d.count
	fmt.Fprintf(&b, "cut %v\noverlay_pages %d\noverlay_pages_max %d\n", d.cut,
		len(d.pages), d.pagesMax)
	fmt.Fprintf(&b, "eio_read %v\neio_write %v\n", fl.eioRead, fl.eioWrite)
	fmt.Fprintf(&b, "enospc %v\nenospc_left %d\nfsync_fail %d\ndelay_us %d\n", fl.enospc,
		fl.enospcLeft, fl.fsyncFail, fl.delay.Microseconds())
	fmt.Fprintf(&b, "no_fallocate %v\nno_punch %v\nallocated_bytes %d\n", fl.noFallocate,
		fl.noPunch, d.allocatedBytes())
	fmt.Fprintf(&b, "reads %d\nwrites %d\nsyncs %d\ndsync_writes %d\nsync_failures %d\n",
		c.reads, c.writes, c.syncs, c.dsyncWrites, c.syncFailures)
	fmt.Fprintf(&b, "committed_pages %d\nwritebacks %d\ndropped_pages %d\n",
		c.committedPages, c.writebacks, c.droppedPages)
	fmt.Fprintf(&b, "injected_eio %d\ninjected_enospc %d\n", c.injectedEIO, c.injectedENOSPC)
	return b.String()
}
