package protocol

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestCodesDocumented keeps the closed tables in codes.go and
// docs/protocol.md in step: every error code has a row in the error code
// table and every close code a row in the close code table.
func TestCodesDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	f, err := parser.ParseFile(token.NewFileSet(), "codes.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	codes, closes := 0, 0
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok {
					continue
				}
				switch {
				case strings.HasPrefix(name.Name, "Code"):
					v, _ := strconv.Unquote(lit.Value)
					codes++
					if !strings.Contains(string(doc), "| `"+v+"` |") {
						t.Errorf("%s (%q) has no row in docs/protocol.md's error code table", name.Name, v)
					}
				case strings.HasPrefix(name.Name, "Close"):
					closes++
					if !strings.Contains(string(doc), "\n| "+lit.Value+" |") {
						t.Errorf("%s (%s) has no row in docs/protocol.md's close code table", name.Name, lit.Value)
					}
				}
			}
		}
	}
	if codes < 20 || closes < 10 {
		t.Fatalf("found %d error codes and %d close codes in codes.go: the parse is broken", codes, closes)
	}
}
