package profile

import "strings"

// Class is where a CPU sample was spent.
type Class int

const (
	// ClassGo is Go code that is neither the runtime nor a system call: the server,
	// the standard library, giouring.
	ClassGo Class = iota
	// ClassRuntime is the Go runtime and its garbage collector, when not in a system
	// call: scheduler, allocator, GC, memmove, map code.
	ClassRuntime
	// ClassSyscall is a system call: kernel time plus Go's enter/exit bookkeeping.
	ClassSyscall
)

func (c Class) String() string {
	switch c {
	case ClassGo:
		return "go code"
	case ClassRuntime:
		return "runtime"
	case ClassSyscall:
		return "syscall"
	}
	return "class?"
}

// syscallEntries are the functions that enter the kernel with a SYSCALL instruction
// (or jump straight to one that does). A sample counts as ClassSyscall when any of
// these is on its stack. The profiling signal is delivered when the thread leaves
// the kernel, so kernel time lands on the entry function's PC; frames below it on
// the stack (runtime.entersyscall, runtime.exitsyscall) are Go's own cost of the
// call and are counted with it.
//
// Where the names come from (go1.26, linux/amd64): syscall/syscall_linux.go and
// syscall/asm_linux_amd64.s; internal/runtime/syscall/linux/asm_linux_amd64.s (and its
// older homes internal/runtime/syscall and runtime/internal/syscall);
// golang.org/x/sys/unix/asm_linux_amd64.s; every TEXT symbol in
// runtime/sys_linux_amd64.s that issues SYSCALL. Left out on purpose: vDSO calls
// (runtime.nanotime1, runtime.walltime, runtime.vgetrandom1, syscall.gettimeofday),
// which run in user space, and signal trampolines (runtime.sigtramp, sigreturn),
// which are the profiler's own delivery path.
var syscallEntries = map[string]bool{
	"syscall.Syscall":           true,
	"syscall.Syscall6":          true,
	"syscall.RawSyscall":        true,
	"syscall.RawSyscall6":       true,
	"syscall.rawSyscallNoError": true,
	"syscall.rawVforkSyscall":   true,

	"internal/runtime/syscall/linux.Syscall6": true,
	"internal/runtime/syscall.Syscall6":       true,
	"runtime/internal/syscall.Syscall6":       true,

	"golang.org/x/sys/unix.Syscall":           true,
	"golang.org/x/sys/unix.Syscall6":          true,
	"golang.org/x/sys/unix.SyscallNoError":    true,
	"golang.org/x/sys/unix.RawSyscall":        true,
	"golang.org/x/sys/unix.RawSyscall6":       true,
	"golang.org/x/sys/unix.RawSyscallNoError": true,

	"runtime.futex":             true, // sleeping and waking threads
	"runtime.usleep":            true,
	"runtime.osyield":           true, // sched_yield
	"runtime.read":              true,
	"runtime.write1":            true,
	"runtime.open":              true,
	"runtime.closefd":           true,
	"runtime.pipe2":             true,
	"runtime.madvise":           true, // returning memory to the kernel
	"runtime.sysMmap":           true,
	"runtime.sysMunmap":         true,
	"runtime.mincore":           true,
	"runtime.clone":             true,
	"runtime.exit":              true,
	"runtime.exitThread":        true,
	"runtime.gettid":            true,
	"runtime.getpid":            true,
	"runtime.tgkill":            true, // preemption signals
	"runtime.raise":             true,
	"runtime.raiseproc":         true,
	"runtime.setitimer":         true,
	"runtime.timer_create":      true,
	"runtime.timer_settime":     true,
	"runtime.timer_delete":      true,
	"runtime.rtsigprocmask":     true,
	"runtime.rt_sigaction":      true,
	"runtime.sigaltstack":       true,
	"runtime.settls":            true,
	"runtime.sched_getaffinity": true,
	"runtime.access":            true,
	"runtime.connect":           true,
	"runtime.socket":            true,
	"runtime.sbrk0":             true,
}

// IsSyscallEntry reports whether name (a Go function name as pprof shows it) enters
// the kernel. See syscallEntries for the list and why.
func IsSyscallEntry(name string) bool { return syscallEntries[name] }

// syscallWrappers are packages whose frames sit between a caller and the system
// call and say nothing about who made it; the caller shown for a system call is the
// first frame above the entry outside them.
var syscallWrappers = []string{
	"syscall", "golang.org/x/sys/unix", "internal/syscall/unix", "internal/poll", "os",
	"internal/runtime/syscall", "internal/runtime/syscall/linux", "runtime/internal/syscall",
}

// PackageOf returns the import path of the package a pprof function name belongs to:
// "runtime" for "runtime.(*mheap).alloc", "github.com/a/b" for "github.com/a/b.(*T).M".
func PackageOf(name string) string {
	slash := strings.LastIndexByte(name, '/')
	dot := strings.IndexByte(name[slash+1:], '.')
	if dot < 0 {
		return name
	}
	return name[:slash+1+dot]
}

// IsRuntime reports whether name is in the Go runtime: package runtime and the
// runtime's internal packages. Pseudo-frames the profiler adds when it cannot unwind
// (runtime._System, runtime._GC, runtime._ExternalCode, runtime._VDSO) are runtime too.
func IsRuntime(name string) bool {
	pkg := PackageOf(name)
	return pkg == "runtime" || strings.HasPrefix(pkg, "internal/runtime/") ||
		strings.HasPrefix(pkg, "runtime/internal/")
}

// gcRoots are runtime functions whose presence on a stack means the sample is
// garbage-collector work: background mark workers, mark assists charged to
// allocating goroutines, sweeping and scavenging.
var gcRoots = map[string]bool{
	"runtime.gcBgMarkWorker":    true,
	"runtime.gcAssistAlloc":     true,
	"runtime.gcAssistAlloc1":    true,
	"runtime.gcDrain":           true,
	"runtime.gcDrainN":          true,
	"runtime.gcStart":           true,
	"runtime.gcMarkDone":        true,
	"runtime.gcMarkTermination": true,
	"runtime.bgsweep":           true,
	"runtime.bgscavenge":        true,
	"runtime.sweepone":          true,
	"runtime.markroot":          true,
	"runtime.scanobject":        true,
	"runtime._GC":               true,
}

// IsGC reports whether name marks garbage-collector work (see gcRoots).
func IsGC(name string) bool { return gcRoots[name] }

// classify returns the class of one stack, given leaf first, and for a system call
// the outermost entry function and its first caller outside the syscall wrappers.
// A stack is ClassSyscall if a syscall entry is anywhere on it; otherwise
// ClassRuntime if its leaf is in the runtime; otherwise ClassGo. gc says whether a
// GC function is on the stack, whatever the class.
func classify(stack []string) (c Class, gc bool, entry, caller string) {
	entryAt := -1
	for i, name := range stack {
		if IsSyscallEntry(name) {
			entryAt = i // keep going: report the outermost entry
		}
		gc = gc || IsGC(name)
	}
	switch {
	case entryAt >= 0:
		entry = stack[entryAt]
		for _, name := range stack[entryAt+1:] {
			if !isWrapper(name) {
				caller = name
				break
			}
		}
		return ClassSyscall, gc, entry, caller
	case len(stack) > 0 && IsRuntime(stack[0]):
		return ClassRuntime, gc, "", ""
	case len(stack) == 0:
		return ClassRuntime, gc, "", "" // no stack at all: the profiler's _System case
	}
	return ClassGo, gc, "", ""
}

func isWrapper(name string) bool {
	pkg := PackageOf(name)
	for _, w := range syscallWrappers {
		if pkg == w {
			return true
		}
	}
	return false
}
