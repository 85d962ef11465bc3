// Package e2e holds end-to-end tests: the real `syncgate` binary started as a
// subprocess, driven by real WebSocket devices (internal/client). Later
// issues add Redis, the MongoDB-wire server and the JS client here.
package e2e
