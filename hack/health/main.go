// lepton-health reads a Lepton resource's health the way Argo CD and Flux do, with their own code:
// Argo CD's Lua health checks under gopher-lua, set up as Argo CD sets up a check from argocd-cm
// (no standard libraries but package, base and table; a one-second deadline; the object decoded
// from JSON the way Argo CD decodes it), and kstatus (sigs.k8s.io/cli-utils), what Flux's health
// checks and `kubectl wait`-style tools compute.
//
// Usage: lepton-health < cases.jsonl
//
// Each input line is {"object": {...}, "script": "path/to/health.lua"} ("script" optional); each
// output line is {"argocd": {"status", "message"} or {"error"}, "kstatus": {"status", "message"} or
// {"error"}}, in order. Many objects go through one process, so a test pays one start.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type input struct {
	Object json.RawMessage `json:"object"`
	Script string          `json:"script"`
}

type health struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

type output struct {
	ArgoCD  *health `json:"argocd,omitempty"`
	KStatus health  `json:"kstatus"`
}

// Argo CD's health status codes; anything else becomes Unknown, as Argo CD does.
var valid = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	scripts := map[string]string{}
	for in.Scan() {
		if len(in.Bytes()) == 0 {
			continue
		}
		var c input
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			fmt.Fprintf(os.Stderr, "lepton-health: bad input line: %v\n", err)
			os.Exit(2)
		}
		// As a client reads it from the apiserver: integers as int64 (kstatus needs them so).
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(c.Object); err != nil {
			fmt.Fprintf(os.Stderr, "lepton-health: bad object: %v\n", err)
			os.Exit(2)
		}
		o := output{KStatus: kstatusOf(u)}
		if c.Script != "" {
			script, ok := scripts[c.Script]
			if !ok {
				b, err := os.ReadFile(c.Script)
				if err != nil {
					fmt.Fprintf(os.Stderr, "lepton-health: %v\n", err)
					os.Exit(2)
				}
				script = string(b)
				scripts[c.Script] = script
			}
			h := argocdOf(u.Object, script)
			o.ArgoCD = &h
		}
		if err := out.Encode(o); err != nil {
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "lepton-health: %v\n", err)
		os.Exit(2)
	}
}

func kstatusOf(u *unstructured.Unstructured) health {
	r, err := status.Compute(u)
	if err != nil {
		return health{Error: err.Error()}
	}
	return health{Status: string(r.Status), Message: r.Message}
}

// argocdOf runs a health.lua as Argo CD runs a customization from argocd-cm without useOpenLibs.
func argocdOf(obj map[string]interface{}, script string) health {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return health{Error: err.Error()}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decode(l, obj))
	if err := l.DoString(script); err != nil {
		return health{Error: err.Error()}
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return health{Error: fmt.Sprintf("expect table output from Lua script, not %s", l.Get(-1).Type())}
	}
	h := health{}
	if s, ok := ret.RawGetString("status").(lua.LString); ok {
		h.Status = string(s)
	}
	if m, ok := ret.RawGetString("message").(lua.LString); ok {
		h.Message = string(m)
	}
	if !valid[h.Status] {
		return health{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return h
}

// decode turns a JSON value into Lua values as Argo CD's decodeValue does.
func decode(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case json.Number:
		return lua.LString(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decode(l, item))
		}
		return arr
	case map[string]interface{}:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decode(l, item))
		}
		return tbl
	}
	return lua.LNil
}
