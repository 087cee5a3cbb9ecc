package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// dropPrivileges switches the process to userName and groupName (either may
// be ""; -user alone takes the user's primary group) once exports and
// sockets are open, so a server started as root serves as nobody. The
// supplementary groups become just that group: nothing opened later needs
// another. Since Go 1.16 syscall.Setgroups, Setgid and Setuid apply to every
// thread of the process, including the shards' locked threads that already
// run; checkThreads verifies it from /proc rather than trusting it.
func dropPrivileges(userName, groupName string) error {
	if userName == "" && groupName == "" {
		return nil
	}
	uid, gid := -1, -1
	if userName != "" {
		u, err := lookupUser(userName)
		if err != nil {
			return err
		}
		uid, gid = u.uid, u.gid
	}
	if groupName != "" {
		g, err := lookupGroup(groupName)
		if err != nil {
			return err
		}
		gid = g
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("-user/-group: only root may change user and group (this "+
			"process runs as uid %d): start nbdring as root, or drop the flags", os.Geteuid())
	}
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("-user/-group: setgroups([%d]): %w", gid, err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("-user/-group: setgid(%d): %w", gid, err)
	}
	if uid >= 0 {
		if err := syscall.Setuid(uid); err != nil {
			return fmt.Errorf("-user: setuid(%d): %w", uid, err)
		}
	}
	return checkThreads("/proc/self/task", uid, gid)
}

type userIDs struct{ uid, gid int }

// lookupUser finds NAME in the user database, or takes a numeric ID as is
// (with the same number as its group when the database does not know it).
func lookupUser(name string) (userIDs, error) {
	u, err := user.Lookup(name)
	if err != nil {
		id, nerr := strconv.Atoi(name)
		if nerr != nil || id < 0 {
			return userIDs{}, fmt.Errorf("-user %s: %w (name a user in /etc/passwd, "+
				"or a numeric uid)", name, err)
		}
		if u, err = user.LookupId(name); err != nil {
			return userIDs{id, id}, nil // an ID no database knows: its group, the same number
		}
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return userIDs{}, fmt.Errorf("-user %s: uid %q gid %q: %w", name, u.Uid, u.Gid, err)
	}
	return userIDs{uid, gid}, nil
}

// lookupGroup finds NAME in the group database, or takes a numeric ID.
func lookupGroup(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		if id, nerr := strconv.Atoi(name); nerr == nil && id >= 0 {
			return id, nil
		}
		return 0, fmt.Errorf("-group %s: %w (name a group in /etc/group, or a numeric "+
			"gid)", name, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("-group %s: gid %q: %w", name, g.Gid, err)
	}
	return gid, nil
}

// checkThreads fails unless every thread listed under taskDir has real,
// effective, saved and filesystem IDs uid (when uid >= 0) and gid: a thread
// left with root's IDs would serve clients with them.
func checkThreads(taskDir string, uid, gid int) error {
	tasks, err := os.ReadDir(taskDir)
	if err != nil {
		return fmt.Errorf("after dropping privileges, list threads: %w (is /proc "+
			"mounted?)", err)
	}
	for _, t := range tasks {
		path := filepath.Join(taskDir, t.Name(), "status")
		ids, err := readStatusIDs(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread exited
		}
		if err != nil {
			return fmt.Errorf("after dropping privileges: %w", err)
		}
		if uid >= 0 && !allEqual(ids["Uid"], uid) || !allEqual(ids["Gid"], gid) {
			return fmt.Errorf("after dropping privileges, thread %s still has Uid %v "+
				"Gid %v (want %d and %d): refusing to serve", t.Name(), ids["Uid"],
				ids["Gid"], uid, gid)
		}
	}
	return nil
}

// readStatusIDs returns the Uid and Gid lines of a /proc status file:
// real, effective, saved and filesystem IDs.
func readStatusIDs(path string) (map[string][]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ids := map[string][]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || key != "Uid" && key != "Gid" {
			continue
		}
		for _, field := range strings.Fields(rest) {
			n, err := strconv.Atoi(field)
			if err != nil {
				return nil, fmt.Errorf("%s: %s line %q: %w", path, key, rest, err)
			}
			ids[key] = append(ids[key], n)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(ids["Uid"]) != 4 || len(ids["Gid"]) != 4 {
		return nil, fmt.Errorf("%s: no Uid and Gid lines of four IDs each", path)
	}
	return ids, nil
}

func allEqual(ids []int, want int) bool {
	for _, id := range ids {
		if id != want {
			return false
		}
	}
	return len(ids) > 0
}
