package xs

import (
	"sort"
	"strings"
)

// node is one XenStore node.
type node struct {
	value    []byte
	perms    []Perm // perms[0]: owner and default access
	children map[string]*node
	gen      uint64 // tree generation of its last change (value, perms, children)
}

// tree is a node tree with the permission and quota rules of xenstored.
// It is not safe for concurrent use; the Server serialises access.
type tree struct {
	root  *node
	gen   uint64            // bumped by every change
	tombs map[string]uint64 // removed path -> generation, for transaction conflicts
	owned map[uint32]int    // nodes per owner, for the per-domain quota
	quota Quotas
}

// change is a node that changed, for watches: its path and the
// permissions that decide who may see the event.
type change struct {
	path    string
	perms   []Perm
	removed bool // a subtree removal: watches below path fire too
}

func newTree(q Quotas) *tree {
	t := &tree{root: &node{perms: []Perm{{Dom: 0, Access: AccessNone}}}, tombs: map[string]uint64{}, owned: map[uint32]int{}, quota: q}
	t.owned[0] = 1
	return t
}

// clone deep-copies the tree for a transaction.
func (t *tree) clone() *tree {
	c := &tree{root: cloneNode(t.root), gen: t.gen, tombs: map[string]uint64{}, owned: map[uint32]int{}, quota: t.quota}
	for k, v := range t.owned {
		c.owned[k] = v
	}
	return c
}

func cloneNode(n *node) *node {
	c := &node{value: append([]byte(nil), n.value...), perms: append([]Perm(nil), n.perms...), gen: n.gen}
	if len(n.children) > 0 {
		c.children = make(map[string]*node, len(n.children))
		for k, v := range n.children {
			c.children[k] = cloneNode(v)
		}
	}
	return c
}

func components(path string) []string {
	if path == "/" {
		return nil
	}
	return strings.Split(path[1:], "/")
}

func (t *tree) lookup(path string) *node {
	n := t.root
	for _, c := range components(path) {
		if n = n.children[c]; n == nil {
			return nil
		}
	}
	return n
}

// access is what dom may do with a node of these permissions: dom0 and
// the owner everything; a listed domain its entry; others the default.
func access(dom uint32, perms []Perm) Access {
	if dom == 0 || perms[0].Dom == dom {
		return AccessBoth
	}
	for _, p := range perms[1:] {
		if p.Dom == dom {
			return p.Access
		}
	}
	return perms[0].Access
}

func (t *tree) bump(n *node) { t.gen++; n.gen = t.gen }

func (t *tree) read(dom uint32, path string) ([]byte, error) {
	n := t.lookup(path)
	if n == nil {
		return nil, ENOENT
	}
	if !access(dom, n.perms).CanRead() {
		return nil, EACCES
	}
	return n.value, nil
}

func (t *tree) directory(dom uint32, path string) ([]string, error) {
	n := t.lookup(path)
	if n == nil {
		return nil, ENOENT
	}
	if !access(dom, n.perms).CanRead() {
		return nil, EACCES
	}
	names := make([]string, 0, len(n.children))
	for k := range n.children {
		names = append(names, k)
	}
	sort.Strings(names)
	return names, nil
}

func (t *tree) getPerms(dom uint32, path string) ([]Perm, error) {
	n := t.lookup(path)
	if n == nil {
		return nil, ENOENT
	}
	if !access(dom, n.perms).CanRead() {
		return nil, EACCES
	}
	return n.perms, nil
}

// write sets a value, creating missing nodes: creation needs write access
// to the nearest existing ancestor; created nodes inherit their parent's
// permissions, and an unprivileged creator owns them (xenstored).
func (t *tree) write(dom uint32, path string, value []byte, onlyCreate bool) ([]change, error) {
	if dom != 0 && t.quota.MaxValueSize > 0 && len(value) > t.quota.MaxValueSize {
		return nil, ENOSPC
	}
	if n := t.lookup(path); n != nil {
		if onlyCreate {
			return nil, nil // MKDIR of an existing node: nothing to do
		}
		if !access(dom, n.perms).CanWrite() {
			return nil, EACCES
		}
		n.value = append(n.value[:0:0], value...)
		t.bump(n)
		return []change{{path: path, perms: n.perms}}, nil
	}
	comps := components(path)
	n, i := t.root, 0
	for ; i < len(comps); i++ {
		c := n.children[comps[i]]
		if c == nil {
			break
		}
		n = c
	}
	if !access(dom, n.perms).CanWrite() {
		return nil, EACCES
	}
	owner := n.perms[0].Dom
	if dom != 0 {
		owner = dom
	}
	if dom != 0 && t.quota.MaxNodesPerDomain > 0 && t.owned[owner]+len(comps)-i > t.quota.MaxNodesPerDomain {
		return nil, ENOSPC
	}
	var created string
	prefix := "/" + strings.Join(comps[:i], "/")
	for ; i < len(comps); i++ {
		perms := append([]Perm(nil), n.perms...)
		perms[0].Dom = owner
		c := &node{perms: perms}
		if n.children == nil {
			n.children = map[string]*node{}
		}
		n.children[comps[i]] = c
		t.bump(n)
		t.bump(c)
		t.owned[owner]++
		prefix = strings.TrimSuffix(prefix, "/") + "/" + comps[i]
		created = prefix
		n = c
	}
	n.value = append([]byte(nil), value...)
	// One event, for the written path, as xenstored fires: watchers of a
	// created parent hear of it through this descendant.
	return []change{{path: created, perms: n.perms}}, nil
}

// rm removes a node and its subtree; removing a missing node whose parent
// exists succeeds (xenstored).
func (t *tree) rm(dom uint32, path string) ([]change, error) {
	if path == "/" {
		return nil, EINVAL
	}
	i := strings.LastIndexByte(path, '/')
	parentPath := path[:i]
	if parentPath == "" {
		parentPath = "/"
	}
	parent := t.lookup(parentPath)
	if parent == nil {
		return nil, ENOENT
	}
	name := path[i+1:]
	n := parent.children[name]
	if n == nil {
		return nil, nil
	}
	if !access(dom, n.perms).CanWrite() {
		return nil, EACCES
	}
	delete(parent.children, name)
	t.bump(parent)
	t.forget(path, n)
	return []change{{path: path, perms: n.perms, removed: true}}, nil
}

func (t *tree) forget(path string, n *node) {
	t.gen++
	t.tombs[path] = t.gen
	t.owned[n.perms[0].Dom]--
	for k, c := range n.children {
		t.forget(path+"/"+k, c)
	}
}

// setPerms replaces a node's permissions: only its owner or dom0 may, and
// only dom0 may give the node away (xenstored's quota rule).
func (t *tree) setPerms(dom uint32, path string, perms []Perm) ([]change, error) {
	n := t.lookup(path)
	if n == nil {
		return nil, ENOENT
	}
	if len(perms) == 0 {
		return nil, EINVAL
	}
	if dom != 0 && n.perms[0].Dom != dom {
		if !access(dom, n.perms).CanWrite() {
			return nil, EACCES
		}
		return nil, EPERM
	}
	if dom != 0 && perms[0].Dom != n.perms[0].Dom {
		return nil, EPERM
	}
	t.owned[n.perms[0].Dom]--
	t.owned[perms[0].Dom]++
	old := n.perms
	n.perms = append([]Perm(nil), perms...)
	t.bump(n)
	// Both the old and new readers learn of the change.
	return []change{{path: path, perms: old}, {path: path, perms: n.perms}}, nil
}

// changedSince reports whether path changed (or appeared, or vanished)
// after generation gen: the transaction conflict test.
func (t *tree) changedSince(path string, gen uint64) bool {
	if n := t.lookup(path); n != nil {
		return n.gen > gen
	}
	return t.tombs[path] > gen
}
