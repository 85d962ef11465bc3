package conflict

import (
	"encoding/json"
	"math"
	"reflect"

	"github.com/syncgate/syncgate/sync/hlc"
)

// Field values are JSON-like: nil, bool, numbers, string, map[string]any,
// []any, as decoded from JSON, plus whatever a storage driver decodes into
// (int32, int64, named map and slice types). The helpers below accept all of
// them and never share a map or slice between input and output.

// deepCopy returns v with every map and slice (and array) copied
// recursively. Scalars are immutable and returned as they are; pointers are
// not followed (JSON-like values have none).
func deepCopy(v any) any {
	switch x := v.(type) {
	case nil, bool, string, float64, int, int64, int32, json.Number:
		return x
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		if x == nil {
			return x
		}
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = deepCopy(e)
		}
		return s
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Map, reflect.Slice, reflect.Array, reflect.Struct, reflect.Interface:
		return copyValue(rv).Interface()
	}
	return v
}

// copyValue is deepCopy for named types (bson.M, bson.A, bson.D, ...).
func copyValue(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		out := reflect.New(v.Type()).Elem()
		out.Set(copyValue(v.Elem()))
		return out
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		out := reflect.MakeMapWithSize(v.Type(), v.Len())
		for it := v.MapRange(); it.Next(); {
			out.SetMapIndex(it.Key(), copyValue(it.Value()))
		}
		return out
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		out := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			out.Index(i).Set(copyValue(v.Index(i)))
		}
		return out
	case reflect.Array:
		out := reflect.New(v.Type()).Elem()
		for i := range v.Len() {
			out.Index(i).Set(copyValue(v.Index(i)))
		}
		return out
	case reflect.Struct:
		out := reflect.New(v.Type()).Elem()
		out.Set(v) // unexported fields are copied shallowly
		for i := range v.NumField() {
			if f := out.Field(i); f.CanSet() {
				f.Set(copyValue(v.Field(i)))
			}
		}
		return out
	}
	return v
}

func copyFields(m map[string]any) map[string]any {
	out := make(map[string]any, len(m)+4)
	for k, v := range m {
		out[k] = deepCopy(v)
	}
	return out
}

func copyClocks(m map[string]hlc.Timestamp) map[string]hlc.Timestamp {
	out := make(map[string]hlc.Timestamp, len(m)+4)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// cloneDoc returns a copy of d that shares nothing with it; nil maps stay nil.
func cloneDoc(d *Doc) Doc {
	out := *d
	if d.Fields != nil {
		out.Fields = copyFields(d.Fields)
	}
	if d.Clocks != nil {
		out.Clocks = copyClocks(d.Clocks)
	}
	return out
}

// addNumber returns v + d and whether v is a number. Integers stay int64
// while d is whole and the sum fits, so counters read back from storage as
// integers stay integers; everything else becomes float64.
func addNumber(v any, d float64) (any, bool) {
	if x, ok := v.(float64); ok { // the common case: values decoded from JSON
		return x + d, true
	}
	if n, ok := v.(json.Number); ok {
		if i, err := n.Int64(); err == nil {
			return addInt(i, d), true
		}
		f, err := n.Float64()
		return f + d, err == nil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return addInt(rv.Int(), d), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if u := rv.Uint(); u <= math.MaxInt64 {
			return addInt(int64(u), d), true
		}
		return float64(rv.Uint()) + d, true
	case reflect.Float32, reflect.Float64:
		return rv.Float() + d, true
	}
	return nil, false
}

func addInt(i int64, d float64) any {
	// -2^63 <= d < 2^63 is exactly the range int64(d) converts without loss.
	if d == math.Trunc(d) && d >= math.MinInt64 && d < math.MaxInt64 {
		di := int64(d)
		sum := i + di
		if (di > 0 && sum > i) || (di < 0 && sum < i) || di == 0 {
			return sum
		}
	}
	return float64(i) + d
}

// asArray returns the elements of a JSON array value. A []any is returned as
// is (callers pass values they own); other slice types are copied into a
// []any. []byte is binary data, not an array.
func asArray(v any) ([]any, bool) {
	if a, ok := v.([]any); ok {
		return a, true
	}
	rv := reflect.ValueOf(v)
	if (rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array) || rv.Type().Elem().Kind() == reflect.Uint8 {
		return nil, false
	}
	out := make([]any, rv.Len())
	for i := range out {
		out[i] = rv.Index(i).Interface()
	}
	return out, true
}

// jsonKey is the identity of a set element: its JSON encoding. encoding/json
// sorts map keys and prints 1 and 1.0 alike, so equal JSON values get equal
// keys whatever Go types hold them.
func jsonKey(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// jsonKind names v's JSON type for error messages.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case map[string]any:
		return "an object"
	}
	if _, ok := asArray(v); ok {
		return "an array"
	}
	if _, ok := addNumber(v, 0); ok {
		return "a number"
	}
	return "a " + reflect.TypeOf(v).String()
}
