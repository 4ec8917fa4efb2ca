package rewrite

import (
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The generic walkers below use protobuf reflection so that checks that must
// see every node (tenancy, "does this touch a declared table", parameter
// renumbering) cannot miss a node type that the hand-written analysis does
// not know about. They visit fields in declaration order, which for
// pg_query's messages is field-number order, so walks are deterministic.

const nodeFullName protoreflect.FullName = "pg_query.Node"

// visit calls fn for m and every message below it, depth first. fn returns
// whether to descend into the message's children, or an error that stops the
// walk.
func visit(m proto.Message, fn func(proto.Message) (bool, error)) error {
	return visitReflect(m.ProtoReflect(), fn)
}

// step is one field of a message that can hold messages: a singular or
// repeated message field, or a oneof (pg_query.Node is one oneof over every
// node type, so looking it up with WhichOneof instead of testing ~250
// fields is what keeps the walks cheap).
type step struct {
	fd    protoreflect.FieldDescriptor
	oneof protoreflect.OneofDescriptor
}

var stepCache sync.Map // protoreflect.FullName -> []step

// stepsFor returns md's message-holding fields in declaration order.
func stepsFor(md protoreflect.MessageDescriptor) []step {
	if v, ok := stepCache.Load(md.FullName()); ok {
		return v.([]step)
	}
	var steps []step
	seen := map[protoreflect.FullName]bool{}
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if !seen[od.FullName()] {
				seen[od.FullName()] = true
				steps = append(steps, step{oneof: od})
			}
			continue
		}
		if fd.Message() == nil || fd.IsMap() {
			continue
		}
		steps = append(steps, step{fd: fd})
	}
	stepCache.Store(md.FullName(), steps)
	return steps
}

// eachChild calls fn with each message directly held by m.
func eachChild(m protoreflect.Message, fn func(fd protoreflect.FieldDescriptor, c protoreflect.Message) error) error {
	for _, st := range stepsFor(m.Descriptor()) {
		fd := st.fd
		if st.oneof != nil {
			fd = m.WhichOneof(st.oneof)
			if fd == nil || fd.Message() == nil {
				continue
			}
		}
		if fd.IsList() {
			l := m.Get(fd).List()
			for j := 0; j < l.Len(); j++ {
				if err := fn(fd, l.Get(j).Message()); err != nil {
					return err
				}
			}
			continue
		}
		if m.Has(fd) {
			if err := fn(fd, m.Get(fd).Message()); err != nil {
				return err
			}
		}
	}
	return nil
}

func visitReflect(m protoreflect.Message, fn func(proto.Message) (bool, error)) error {
	if !m.IsValid() {
		return nil
	}
	descend, err := fn(m.Interface())
	if err != nil || !descend {
		return err
	}
	return eachChild(m, func(_ protoreflect.FieldDescriptor, c protoreflect.Message) error {
		return visitReflect(c, fn)
	})
}

// childNodes calls fn for each *pg_query.Node directly below m: fields of
// type Node, and Nodes reached through non-Node messages (TypeName,
// WindowDef, Alias, ...). It does not descend into the Nodes it reports.
func childNodes(m proto.Message, fn func(*pg_query.Node) error) error {
	return childNodesReflect(m.ProtoReflect(), fn)
}

func childNodesReflect(m protoreflect.Message, fn func(*pg_query.Node) error) error {
	if !m.IsValid() {
		return nil
	}
	return eachChild(m, func(fd protoreflect.FieldDescriptor, c protoreflect.Message) error {
		if fd.Message().FullName() == nodeFullName {
			if n, ok := c.Interface().(*pg_query.Node); ok && n != nil {
				return fn(n)
			}
			return nil
		}
		return childNodesReflect(c, fn)
	})
}

// inner returns the message a Node wraps, or nil for an empty Node.
func inner(n *pg_query.Node) proto.Message {
	if n == nil || n.Node == nil {
		return nil
	}
	m := n.ProtoReflect()
	od := m.Descriptor().Oneofs().ByName("node")
	fd := m.WhichOneof(od)
	if fd == nil {
		return nil
	}
	return m.Get(fd).Message().Interface()
}

// nodeName returns the protobuf message name of a Node's content, e.g.
// "XmlExpr", for constructs rewrite has no better name for.
func nodeName(m proto.Message) string {
	if m == nil {
		return "expression"
	}
	return string(m.ProtoReflect().Descriptor().Name())
}
