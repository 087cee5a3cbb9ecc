//go:build !invariants

package engine

const invariantsOn = false

func assert(bool, string) {}
