package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
)

// Decode parses one client message. Errors are *Error with CodeMalformed or
// CodeUnknownType. The message is nil on error; a caller that wants to echo
// the rid reads the Envelope itself.
func Decode(data []byte) (Message, *Error) {
	var env Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, Errorf(CodeMalformed, "invalid JSON message: %s", jsonReason(err))
	}
	var m Message
	switch env.Type {
	case TypeHello:
		m = &Hello{}
	case TypePush:
		m = &Push{}
	case TypePull:
		m = &Pull{}
	case TypeAuth:
		m = &Auth{}
	case TypePing:
		m = &Ping{}
	case TypeAppState:
		m = &AppStateMsg{}
	case TypeJoin:
		m = &Join{}
	case TypeLeave:
		m = &Leave{}
	case TypeRoomState:
		m = &RoomStateMsg{}
	case TypeTyping:
		m = &Typing{}
	case TypeCheckpoint:
		m = &Checkpoint{}
	case "":
		return nil, Errorf(CodeMalformed, "message has no type")
	default:
		return nil, Errorf(CodeUnknownType, "unknown message type %q", truncate(env.Type, 32))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(m); err != nil {
		return nil, Errorf(CodeMalformed, "invalid %s message: %s", env.Type, jsonReason(err))
	}
	if p, ok := m.(*Push); ok {
		if !normalizeNumbers(p) {
			return nil, Errorf(CodeMalformed, "invalid push message: a number is out of range")
		}
	}
	return m, nil
}

// normalizeNumbers turns json.Number values in document data into float64
// (the JSON number model every client shares), after UseNumber let the
// decoder keep uint64 mutation ids exact. It reports false when a number
// does not fit a float64 (such as 1e400): rejecting it beats silently
// changing its type or value.
func normalizeNumbers(p *Push) bool {
	ok := true
	for i := range p.Mutations {
		mu := &p.Mutations[i]
		ok = numbersInMap(mu.Data) && numbersInMap(mu.Set) && ok
		for _, v := range mu.Add {
			ok = numbersInSlice(v) && ok
		}
		for _, v := range mu.Remove {
			ok = numbersInSlice(v) && ok
		}
	}
	return ok
}

func numbersInMap(m map[string]any) bool {
	ok := true
	for k, v := range m {
		var vok bool
		m[k], vok = numberValue(v)
		ok = ok && vok
	}
	return ok
}

func numbersInSlice(s []any) bool {
	ok := true
	for i, v := range s {
		var vok bool
		s[i], vok = numberValue(v)
		ok = ok && vok
	}
	return ok
}

func numberValue(v any) (any, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case map[string]any:
		return x, numbersInMap(x)
	case []any:
		return x, numbersInSlice(x)
	}
	return v, true
}

func jsonReason(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return "syntax error at byte " + itoa(se.Offset)
	case errors.As(err, &te):
		return "field " + truncate(te.Field, 64) + " must be " + te.Type.String()
	}
	return truncate(err.Error(), 128)
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) && len(s) > 0 {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// Limits bound what a mutation may contain.
type Limits struct {
	MaxDepth   int // nesting depth of objects/arrays in a value; default 32
	MaxIDBytes int // document id length; default 256
}

func (l Limits) withDefaults() Limits {
	if l.MaxDepth <= 0 {
		l.MaxDepth = 32
	}
	if l.MaxIDBytes <= 0 {
		l.MaxIDBytes = 256
	}
	return l
}

// reservedFields are top-level names the server keeps for itself: the
// materialized MongoDB documents use _id and _sync, and conflict.LWW keeps
// its whole-document clock under "*".
var reservedFields = map[string]bool{"_id": true, "_sync": true, "*": true}

// ValidateMutation checks names, field names and nesting. It does not check
// access or size: the engine does.
func ValidateMutation(m *Mutation, lim Limits) *Error {
	lim = lim.withDefaults()
	if m.ID == 0 {
		return Errorf(CodeBadRequest, "mutation id (mid) must be > 0")
	}
	if err := ValidateScope(m.Scope); err != nil {
		return err
	}
	if err := ValidateCollection(m.Collection); err != nil {
		return err
	}
	if m.DocID == "" || len(m.DocID) > lim.MaxIDBytes || !utf8.ValidString(m.DocID) || hasControl(m.DocID) {
		return Errorf(CodeInvalidName, "document id must be 1-%d bytes of printable UTF-8", lim.MaxIDBytes)
	}
	switch m.Op {
	case "put":
		if m.Data == nil {
			return Errorf(CodeBadRequest, "put needs data")
		}
		if !patchEmpty(&m.PatchOps) {
			return Errorf(CodeBadRequest, "put takes data only, not patch operations")
		}
		return validateObject(m.Data, 1, lim, true)
	case "patch":
		if m.Data != nil {
			return Errorf(CodeBadRequest, "patch takes set/unset/inc/add/remove, not data")
		}
		if patchEmpty(&m.PatchOps) {
			return Errorf(CodeBadRequest, "patch has no operations")
		}
		return validatePatch(&m.PatchOps, lim)
	case "delete":
		if m.Data != nil || !patchEmpty(&m.PatchOps) {
			return Errorf(CodeBadRequest, "delete takes no data")
		}
		return nil
	}
	return Errorf(CodeBadRequest, "op must be put, patch or delete, not %q", truncate(string(m.Op), 32))
}

func validatePatch(p *conflict.PatchOps, lim Limits) *Error {
	seen := map[string]string{}
	claim := func(field, op string) *Error {
		if err := validateFieldName(field, true); err != nil {
			return err
		}
		if prev, ok := seen[field]; ok {
			return Errorf(CodeBadRequest, "field %q appears in both %s and %s", truncate(field, 64), prev, op)
		}
		seen[field] = op
		return nil
	}
	for k, v := range p.Set {
		if err := claim(k, "set"); err != nil {
			return err
		}
		if err := validateValue(v, 2, lim); err != nil {
			return err
		}
	}
	for _, k := range p.Unset {
		if err := claim(k, "unset"); err != nil {
			return err
		}
	}
	for k := range p.Inc {
		if err := claim(k, "inc"); err != nil {
			return err
		}
	}
	for k, vs := range p.Add {
		if err := claim(k, "add"); err != nil {
			return err
		}
		if err := validateValue(vs, 2, lim); err != nil {
			return err
		}
	}
	for k, vs := range p.Remove {
		if _, ok := seen[k]; ok && seen[k] != "add" {
			return Errorf(CodeBadRequest, "field %q appears in both %s and remove", truncate(k, 64), seen[k])
		}
		if err := validateFieldName(k, true); err != nil {
			return err
		}
		if err := validateValue(vs, 2, lim); err != nil {
			return err
		}
	}
	return nil
}

func validateObject(obj map[string]any, depth int, lim Limits, top bool) *Error {
	if depth > lim.MaxDepth {
		return Errorf(CodeTooDeep, "document nests deeper than %d levels", lim.MaxDepth)
	}
	if ref, ok := obj[MediaRefKey]; ok && !top {
		return validateMediaRef(obj, ref)
	}
	for k, v := range obj {
		if err := validateFieldName(k, top); err != nil {
			return err
		}
		if err := validateValue(v, depth+1, lim); err != nil {
			return err
		}
	}
	return nil
}

func validateValue(v any, depth int, lim Limits) *Error {
	switch x := v.(type) {
	case map[string]any:
		return validateObject(x, depth, lim, false)
	case []any:
		if depth > lim.MaxDepth {
			return Errorf(CodeTooDeep, "document nests deeper than %d levels", lim.MaxDepth)
		}
		for _, e := range x {
			if err := validateValue(e, depth+1, lim); err != nil {
				return err
			}
		}
	case string:
		if !utf8.ValidString(x) {
			return Errorf(CodeBadRequest, "string value is not valid UTF-8")
		}
	}
	return nil
}

func validateFieldName(k string, top bool) *Error {
	switch {
	case k == "":
		return Errorf(CodeInvalidField, "empty field name")
	case k[0] == '$':
		return Errorf(CodeInvalidField, "field name %q starts with $", truncate(k, 64))
	case strings.ContainsRune(k, '.'):
		return Errorf(CodeInvalidField, "field name %q contains '.'", truncate(k, 64))
	case strings.ContainsRune(k, 0) || !utf8.ValidString(k):
		return Errorf(CodeInvalidField, "field name %q is not printable UTF-8", truncate(k, 64))
	case top && reservedFields[k]:
		return Errorf(CodeInvalidField, "field name %q is reserved", k)
	}
	return nil
}

// MediaRefKey is the one field name starting with '$' that a document may
// hold: {"$media": "<id>"}, an object with exactly this key, anywhere
// below the top level, references media of the document's scope. The
// engine checks on commit that the media exists (media_not_found).
const MediaRefKey = "$media"

// validateMediaRef checks an object holding MediaRefKey: it must be the
// object's only key, and its value a media id.
func validateMediaRef(obj map[string]any, ref any) *Error {
	if len(obj) != 1 {
		return Errorf(CodeInvalidField, "a %s reference must be the only field of its object", MediaRefKey)
	}
	id, ok := ref.(string)
	if !ok || !storage.ValidMediaID(id) {
		return Errorf(CodeBadRequest, "a %s reference must be a media id (1-%d bytes of A-Z a-z 0-9 _ -)", MediaRefKey, storage.MaxMediaIDBytes)
	}
	return nil
}

// MediaRef returns the media id when v is a media reference.
func MediaRef(v any) (string, bool) {
	obj, ok := v.(map[string]any)
	if !ok || len(obj) != 1 {
		return "", false
	}
	id, ok := obj[MediaRefKey].(string)
	return id, ok
}

// MediaRefs appends the media ids referenced anywhere in v to ids.
func MediaRefs(ids []string, v any) []string {
	if id, ok := MediaRef(v); ok {
		return append(ids, id)
	}
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			ids = MediaRefs(ids, e)
		}
	case []any:
		for _, e := range x {
			ids = MediaRefs(ids, e)
		}
	}
	return ids
}

// MutationMediaRefs returns the media ids a mutation adds to its
// document: in a put's data, a patch's set values and add values (a
// remove or unset only drops references, which needs no check).
// Duplicates may repeat.
func MutationMediaRefs(m *Mutation) []string {
	var ids []string
	for _, v := range m.Data {
		ids = MediaRefs(ids, v)
	}
	for _, v := range m.Set {
		ids = MediaRefs(ids, v)
	}
	for _, vs := range m.Add {
		for _, v := range vs {
			ids = MediaRefs(ids, v)
		}
	}
	return ids
}

// MaxDeviceBytes caps a device id.
const MaxDeviceBytes = 128

// ValidateDevice checks a device id: 1-128 bytes of printable UTF-8 without
// '/', so that "user/device" names one device unambiguously.
func ValidateDevice(d string) *Error {
	if d == "" {
		return Errorf(CodeBadRequest, "device is required")
	}
	if len(d) > MaxDeviceBytes || !utf8.ValidString(d) || hasControl(d) || strings.ContainsRune(d, '/') {
		return Errorf(CodeBadRequest, "device must be 1-%d bytes of printable UTF-8 without '/'", MaxDeviceBytes)
	}
	return nil
}

// ValidateScope checks the form "user:<id>" or "space:<id>".
func ValidateScope(s string) *Error {
	kind, id, ok := strings.Cut(s, ":")
	if !ok || (kind != "user" && kind != "space") || id == "" || len(s) > 256 || !utf8.ValidString(s) || hasControl(s) {
		return Errorf(CodeInvalidName, "scope %q must be user:<id> or space:<id> (at most 256 bytes)", truncate(s, 64))
	}
	return nil
}

// ValidateCollection checks a collection name: a letter or '_', then up to 63
// letters, digits or '_'. The rule keeps names valid as MongoDB collections.
func ValidateCollection(c string) *Error {
	ok := len(c) > 0 && len(c) <= 64
	for i := 0; ok && i < len(c); i++ {
		ch := c[i]
		ok = ch == '_' || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (i > 0 && ch >= '0' && ch <= '9')
	}
	if !ok || strings.HasPrefix(c, "system") || strings.HasPrefix(c, "_sg") {
		return Errorf(CodeInvalidName, "collection %q must match [A-Za-z_][A-Za-z0-9_]{0,63} and not start with system or _sg", truncate(c, 64))
	}
	return nil
}

func patchEmpty(p *conflict.PatchOps) bool {
	return len(p.Set) == 0 && len(p.Unset) == 0 && len(p.Inc) == 0 && len(p.Add) == 0 && len(p.Remove) == 0
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}
