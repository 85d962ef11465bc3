package e2e

import (
	"bufio"
	"bytes"
	le "encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test servers are real: `make test` (tools/testenv.sh) starts Redis and
// FerretDB, or passes on the servers given in SYNCGATE_REDIS_ADDR and
// SYNCGATE_MONGO_URI. A missing variable fails the run; it never skips.

func requireEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run the tests through `make test`, which starts Redis and FerretDB "+
			"(or set SYNCGATE_MONGO_URI and SYNCGATE_REDIS_ADDR to running servers)", name)
	}
	return v
}

func TestServersRedisAnswersPing(t *testing.T) {
	addr := requireEnv(t, "SYNCGATE_REDIS_ADDR")
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("SYNCGATE_REDIS_ADDR=%s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "PING\r\n"); err != nil {
		t.Fatalf("SYNCGATE_REDIS_ADDR=%s: PING: %v", addr, err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "+PONG\r\n" {
		t.Fatalf("SYNCGATE_REDIS_ADDR=%s: PING answered %q (%v), want +PONG", addr, line, err)
	}
}

func TestServersMongoAnswersHello(t *testing.T) {
	uri := requireEnv(t, "SYNCGATE_MONGO_URI")
	hosts, tls, err := mongoHosts(uri)
	if err != nil {
		t.Fatalf("SYNCGATE_MONGO_URI=%s: %v", uri, err)
	}
	reached := 0
	for _, host := range hosts {
		conn, err := net.DialTimeout("tcp", host, 5*time.Second)
		if err != nil {
			t.Logf("SYNCGATE_MONGO_URI host %s: %v", host, err)
			continue
		}
		if !tls { // a plain connection: check it speaks the MongoDB wire protocol
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			if err := mongoHello(conn); err != nil {
				conn.Close()
				t.Fatalf("SYNCGATE_MONGO_URI host %s accepts connections but is not a MongoDB server: %v", host, err)
			}
		}
		conn.Close()
		reached++
	}
	if reached == 0 {
		t.Fatalf("SYNCGATE_MONGO_URI=%s: no host reachable", uri)
	}
}

// mongoHosts returns host:port of every seed in a mongodb:// or
// mongodb+srv:// URI, and whether it asks for TLS.
func mongoHosts(uri string) (hosts []string, tls bool, err error) {
	rest, srv := strings.CutPrefix(uri, "mongodb+srv://")
	if !srv {
		var ok bool
		if rest, ok = strings.CutPrefix(uri, "mongodb://"); !ok {
			return nil, false, errors.New("not a mongodb:// or mongodb+srv:// URI")
		}
	}
	hostPart, query := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		hostPart = rest[:i]
		if j := strings.IndexByte(rest, '?'); j >= 0 {
			query = strings.ToLower(rest[j+1:])
		}
	}
	if i := strings.LastIndexByte(hostPart, '@'); i >= 0 {
		hostPart = hostPart[i+1:]
	}
	tls = srv || strings.Contains(query, "tls=true") || strings.Contains(query, "ssl=true")
	if srv {
		_, addrs, err := net.LookupSRV("mongodb", "tcp", hostPart)
		if err != nil {
			return nil, tls, err
		}
		for _, a := range addrs {
			hosts = append(hosts, net.JoinHostPort(strings.TrimSuffix(a.Target, "."), strconv.Itoa(int(a.Port))))
		}
		return hosts, tls, nil
	}
	for _, h := range strings.Split(hostPart, ",") {
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "27017")
		}
		hosts = append(hosts, h)
	}
	return hosts, tls, nil
}

// mongoHello sends {hello: 1, $db: "admin"} as an OP_MSG and checks the reply
// has ok: 1.
func mongoHello(conn net.Conn) error {
	var doc bytes.Buffer
	doc.Write([]byte{0, 0, 0, 0})
	doc.WriteString("\x10hello\x00")
	le.Write(&doc, le.LittleEndian, int32(1))
	doc.WriteString("\x02$db\x00")
	le.Write(&doc, le.LittleEndian, int32(len("admin")+1))
	doc.WriteString("admin\x00\x00")
	d := doc.Bytes()
	le.LittleEndian.PutUint32(d, uint32(len(d)))

	var msg bytes.Buffer
	le.Write(&msg, le.LittleEndian, [4]int32{int32(16 + 4 + 1 + len(d)), 1, 0, 2013})
	le.Write(&msg, le.LittleEndian, uint32(0)) // flagBits
	msg.WriteByte(0)                           // section kind 0: body
	msg.Write(d)
	if _, err := conn.Write(msg.Bytes()); err != nil {
		return err
	}

	var header [4]int32
	if err := le.Read(conn, le.LittleEndian, &header); err != nil {
		return err
	}
	if header[3] != 2013 || header[0] < 16 || header[0] > 16<<20 {
		return errors.New("unexpected reply header")
	}
	body := make([]byte, header[0]-16)
	if _, err := io.ReadFull(conn, body); err != nil {
		return err
	}
	i := bytes.Index(body, []byte("\x01ok\x00"))
	if i < 0 || len(body) < i+4+8 || math.Float64frombits(le.LittleEndian.Uint64(body[i+4:])) != 1 {
		return errors.New("hello did not answer ok: 1")
	}
	return nil
}
