package testenv

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The emulator's account and region, as they appear in its ARNs
// (arn:aws:kms:us-east-1:111122223333:key/<uuid>).
const (
	KMSRegion  = "us-east-1"
	KMSAccount = "111122223333"
)

// Key states, as KMS names them in KeyMetadata.KeyState.
const (
	KMSKeyEnabled         = "Enabled"
	KMSKeyDisabled        = "Disabled"
	KMSKeyPendingDeletion = "PendingDeletion"
)

// KMS error types, as KMS names them in the "__type" of an error body.
const (
	KMSInternalException          = "KMSInternalException"       // HTTP 500
	KMSDependencyTimeoutException = "DependencyTimeoutException" // HTTP 503
	KMSThrottlingException        = "ThrottlingException"
	KMSInvalidStateException      = "KMSInvalidStateException"
	KMSDisabledException          = "DisabledException"
	KMSNotFoundException          = "NotFoundException"
	KMSInvalidCiphertextException = "InvalidCiphertextException"
	KMSIncorrectKeyException      = "IncorrectKeyException"
	KMSValidationException        = "ValidationException"
	KMSAlreadyExistsException     = "AlreadyExistsException"

	kmsSerializationException = "SerializationException"
	kmsUnknownOperation       = "UnknownOperationException"
	kmsMissingAuthentication  = "MissingAuthenticationTokenException"
	kmsUnsupportedOperation   = "UnsupportedOperationException"
)

// kmsMaxBody bounds a request body; KMS's own limit on a plaintext is 4 KiB.
const kmsMaxBody = 1 << 20

// KMS is an emulator of the AWS KMS JSON 1.1 API (POST /, X-Amz-Target:
// TrentService.<Op>, Content-Type: application/x-amz-json-1.1), served on
// 127.0.0.1 for tests and for `pgcloak demo`. Point the real SDK at URL
// (BaseEndpoint) with any static credentials.
//
// It implements CreateKey, CreateAlias, ListAliases, DescribeKey, Encrypt,
// GenerateDataKey, Decrypt, DisableKey, EnableKey and ScheduleKeyDeletion
// for symmetric keys, with KMS's error types:
//
//   - every key has its own random AES-256-GCM key material; a
//     CiphertextBlob is
//     0x01 | len(key id) (1) | key id | nonce (12) | ciphertext+tag,
//     so Decrypt needs no KeyId, and the associated data is the blob's
//     header followed by the EncryptionContext's pairs sorted by name, each
//     name and value prefixed with its length (uint32 BE). A Decrypt under
//     another context, or of a tampered blob, is InvalidCiphertextException.
//   - KeyId may be a key id, a key ARN, an alias name (alias/x) or an alias
//     ARN where KMS accepts aliases (DescribeKey, Encrypt, GenerateDataKey,
//     Decrypt); DisableKey, EnableKey and ScheduleKeyDeletion, like KMS,
//     take only a key id or key ARN.
//   - a disabled key is DisabledException; a key pending deletion is
//     KMSInvalidStateException for every use (KMS's waiting period is not
//     emulated: the key is unusable at once); an unknown key is
//     NotFoundException, as is the key of a blob after DeleteKey.
//
// The SigV4 signature is not verified, but the Authorization header must be
// present. Error bodies are {"__type": ..., "message": ...} with HTTP 400,
// or 500 (503 for DependencyTimeoutException) for injected faults.
//
// Tests can count calls (Calls, KeyCalls), inject faults (Fail) and
// latency (SetLatency). A delayed call honours the client's cancellation
// and Close. All methods are safe for concurrent use.
type KMS struct {
	// URL is the endpoint, "http://<listen address>": "http://127.0.0.1:<port>"
	// for NewKMS.
	URL string

	srv       *http.Server
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error
	served    chan struct{} // closed when Serve has returned

	mu       sync.Mutex
	keys     map[string]*kmsKey // by key id
	aliases  map[string]string  // alias name ("alias/x") -> key id
	calls    map[string]int     // op -> calls
	keyCalls map[[2]string]int  // (op, key id) -> calls that named the key
	faults   map[string]*kmsFault
	latency  map[string]time.Duration
}

// kmsKey is one emulated KMS key.
type kmsKey struct {
	id, arn     string
	description string
	created     time.Time
	deletion    time.Time // when scheduled for deletion
	state       string
	aead        cipher.AEAD
}

// kmsFault is an injected failure: the next n calls (n < 0: every call)
// answer with errType.
type kmsFault struct {
	errType string
	n       int
}

// KMSKey names a key the emulator created.
type KMSKey struct {
	ID  string // the key id, a UUID
	ARN string // arn:aws:kms:<KMSRegion>:<KMSAccount>:key/<ID>
}

// KMSError is an error answer of the emulator, over HTTP or from its Go
// methods.
type KMSError struct {
	Status  int    // HTTP status
	Type    string // KMS error type, e.g. KMSNotFoundException
	Message string
}

func (e *KMSError) Error() string { return "testenv: kms: " + e.Type + ": " + e.Message }

func kmsErrorf(errType, format string, args ...any) *KMSError {
	return &KMSError{Status: http.StatusBadRequest, Type: errType, Message: fmt.Sprintf(format, args...)}
}

// NewKMS starts an emulator on a free 127.0.0.1 port. Stop it with Close.
func NewKMS() (*KMS, error) { return NewKMSAt("127.0.0.1:0") }

// NewKMSAt starts an emulator listening on addr (host:port; port 0 picks a
// free port), for cmd/pgcloak-kms. The emulator authenticates nobody and
// its keys live in memory only, so addr should be a loopback address, or
// an address inside a private network such as a docker compose project's.
// Stop it with Close.
func NewKMSAt(addr string) (*KMS, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("testenv: kms emulator: %w", err)
	}
	k := &KMS{
		URL:      "http://" + ln.Addr().String(),
		done:     make(chan struct{}),
		served:   make(chan struct{}),
		keys:     make(map[string]*kmsKey),
		aliases:  make(map[string]string),
		calls:    make(map[string]int),
		keyCalls: make(map[[2]string]int),
		faults:   make(map[string]*kmsFault),
		latency:  make(map[string]time.Duration),
	}
	k.srv = &http.Server{Handler: k, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(k.served)
		k.srv.Serve(ln)
	}()
	return k, nil
}

// StartKMS starts an emulator for t and closes it when t ends.
func StartKMS(t testing.TB) *KMS {
	t.Helper()
	k, err := NewKMS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Errorf("close kms emulator: %v", err)
		}
	})
	return k
}

// Close stops the emulator at once: calls in flight, delayed ones
// included, end without an answer. It may be called more than once.
func (k *KMS) Close() error {
	k.closeOnce.Do(func() {
		close(k.done)
		k.closeErr = k.srv.Close()
		<-k.served
	})
	return k.closeErr
}

// CreateKey creates an enabled symmetric key, as the CreateKey operation
// does.
func (k *KMS) CreateKey(description string) KMSKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := k.createKey(description)
	return KMSKey{ID: key.id, ARN: key.arn}
}

// CreateAlias makes alias ("alias/name") refer to the key keyID names (a
// key id or key ARN).
func (k *KMS) CreateAlias(alias, keyID string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.createAlias(alias, keyID); err != nil {
		return err
	}
	return nil
}

// DisableKey disables a key (key id or key ARN): using it is then
// DisabledException.
func (k *KMS) DisableKey(keyID string) error { return k.setEnabled(keyID, false) }

// EnableKey enables a disabled key (key id or key ARN).
func (k *KMS) EnableKey(keyID string) error { return k.setEnabled(keyID, true) }

// ScheduleKeyDeletion puts a key (key id or key ARN) in PendingDeletion,
// which makes it unusable at once.
func (k *KMS) ScheduleKeyDeletion(keyID string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, err := k.scheduleDeletion(keyID, 30)
	if err != nil {
		return err
	}
	return nil
}

// DeleteKey removes a key (key id or key ARN) and its key material, as KMS
// does at the end of the deletion waiting period: every blob it made is
// undecryptable for good, and every use of it is NotFoundException. Its
// aliases go with it.
func (k *KMS) DeleteKey(keyID string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	key, err := k.resolve(keyID, false)
	if err != nil {
		return err
	}
	delete(k.keys, key.id)
	for alias, id := range k.aliases {
		if id == key.id {
			delete(k.aliases, alias)
		}
	}
	return nil
}

// KeyState returns a key's state (KMSKeyEnabled, KMSKeyDisabled,
// KMSKeyPendingDeletion). keyID may be any form DescribeKey accepts.
func (k *KMS) KeyState(keyID string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	key, err := k.resolve(keyID, true)
	if err != nil {
		return "", err
	}
	return key.state, nil
}

// Calls returns how many requests named op (e.g. "Decrypt") the emulator
// has received, injected failures and invalid requests included.
func (k *KMS) Calls(op string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.calls[op]
}

// KeyCalls returns how many requests named op were for the key keyID
// names (any form DescribeKey accepts; for Decrypt, the key of the blob),
// whatever their outcome.
func (k *KMS) KeyCalls(op, keyID string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	key, err := k.resolve(keyID, true)
	if err != nil {
		return 0
	}
	return k.keyCalls[[2]string{op, key.id}]
}

// ResetCalls sets every call count back to zero.
func (k *KMS) ResetCalls() {
	k.mu.Lock()
	defer k.mu.Unlock()
	clear(k.calls)
	clear(k.keyCalls)
}

// Fail makes the next n requests named op (every op when op is "") answer
// with the KMS error type errType, or KMSInternalException when errType is
// empty; n < 0 means every request until ClearFaults. KMSInternalException
// is an HTTP 500 and DependencyTimeoutException a 503, which the SDK
// retries; other types are 400s. A fault for op takes precedence over one
// for every op. The faulted request is counted but has no effect.
func (k *KMS) Fail(op, errType string, n int) {
	if errType == "" {
		errType = KMSInternalException
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.faults[op] = &kmsFault{errType: errType, n: n}
}

// ClearFaults removes every injected fault.
func (k *KMS) ClearFaults() {
	k.mu.Lock()
	defer k.mu.Unlock()
	clear(k.faults)
}

// SetLatency delays every request named op (every op when op is "") by d
// before it is answered; d == 0 removes the delay. The delay ends early,
// without an answer, when the client gives up or the emulator is closed.
func (k *KMS) SetLatency(op string, d time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if d <= 0 {
		delete(k.latency, op)
		return
	}
	k.latency[op] = d
}

// kmsRequest holds the request fields of every emulated operation; each
// uses the ones it needs. Blobs are base64 in JSON, as []byte is.
type kmsRequest struct {
	KeyId               string
	TargetKeyId         string
	AliasName           string
	Description         string
	KeySpec             string
	KeyUsage            string
	NumberOfBytes       *int
	Plaintext           []byte
	CiphertextBlob      []byte
	EncryptionContext   map[string]string
	EncryptionAlgorithm string
	PendingWindowInDays *int
}

// ServeHTTP answers one KMS API request.
func (k *KMS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Amzn-RequestId", newUUID())
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		writeKMSError(w, kmsErrorf(kmsUnknownOperation, "the emulator answers POST / only"))
		return
	}
	if r.Header.Get("Authorization") == "" {
		writeKMSError(w, kmsErrorf(kmsMissingAuthentication, "missing authentication token"))
		return
	}
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
	if !ok || op == "" {
		writeKMSError(w, kmsErrorf(kmsUnknownOperation, "X-Amz-Target must be TrentService.<operation>"))
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		writeKMSError(w, kmsErrorf(kmsSerializationException, "Content-Type must be application/x-amz-json-1.1, got %q", ct))
		return
	}
	var req kmsRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, kmsMaxBody+1))
	if err == nil && len(body) > kmsMaxBody {
		err = errors.New("request body too large")
	}
	if err == nil {
		err = json.Unmarshal(body, &req)
	}

	k.mu.Lock()
	k.calls[op]++
	delay, ok := k.latency[op]
	if !ok {
		delay = k.latency[""]
	}
	k.mu.Unlock()

	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			panic(http.ErrAbortHandler) // no answer at all, not an empty 200
		case <-k.done:
			t.Stop()
			panic(http.ErrAbortHandler)
		}
	}
	if err != nil {
		writeKMSError(w, kmsErrorf(kmsSerializationException, "cannot decode the request: %v", err))
		return
	}

	k.mu.Lock()
	resp, kerr := k.do(op, &req)
	k.mu.Unlock()
	if kerr != nil {
		writeKMSError(w, kerr)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(resp)
}

// writeKMSError writes e as KMS does: its type in the body's "__type" and in
// the X-Amzn-ErrorType header.
func writeKMSError(w http.ResponseWriter, e *KMSError) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", e.Type)
	w.WriteHeader(e.Status)
	json.NewEncoder(w).Encode(map[string]string{"__type": e.Type, "message": e.Message})
}

// do runs op with k.mu held: an injected fault if one is due, else the
// operation.
func (k *KMS) do(op string, req *kmsRequest) (any, *KMSError) {
	f := k.faults[op]
	if f == nil {
		f = k.faults[""]
	}
	if f != nil && f.n != 0 {
		if f.n > 0 {
			f.n--
		}
		status := http.StatusBadRequest
		switch f.errType {
		case KMSInternalException:
			status = http.StatusInternalServerError
		case KMSDependencyTimeoutException:
			status = http.StatusServiceUnavailable
		}
		return nil, &KMSError{Status: status, Type: f.errType, Message: "injected by testenv.KMS"}
	}

	switch op {
	case "CreateKey":
		return k.opCreateKey(req)
	case "CreateAlias":
		if err := k.createAlias(req.AliasName, req.TargetKeyId); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	case "ListAliases":
		return k.opListAliases(req)
	case "DescribeKey":
		key, err := k.resolve(req.KeyId, true)
		if err != nil {
			return nil, err
		}
		k.keyCalls[[2]string{op, key.id}]++
		return map[string]any{"KeyMetadata": key.metadata()}, nil
	case "Encrypt":
		return k.opEncrypt(op, req)
	case "GenerateDataKey":
		return k.opGenerateDataKey(op, req)
	case "Decrypt":
		return k.opDecrypt(op, req)
	case "DisableKey", "EnableKey":
		key, err := k.resolve(req.KeyId, false)
		if err != nil {
			return nil, err
		}
		k.keyCalls[[2]string{op, key.id}]++
		if err := key.setEnabled(op == "EnableKey"); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	case "ScheduleKeyDeletion":
		days := 30
		if req.PendingWindowInDays != nil {
			days = *req.PendingWindowInDays
		}
		key, err := k.scheduleDeletion(req.KeyId, days)
		if key != nil {
			k.keyCalls[[2]string{op, key.id}]++
		}
		if err != nil {
			return nil, err
		}
		return map[string]any{
			"KeyId":               key.arn,
			"DeletionDate":        epoch(key.deletion),
			"KeyState":            key.state,
			"PendingWindowInDays": days,
		}, nil
	}
	return nil, kmsErrorf(kmsUnsupportedOperation, "the emulator does not implement %s", op)
}

func (k *KMS) opCreateKey(req *kmsRequest) (any, *KMSError) {
	if req.KeySpec != "" && req.KeySpec != "SYMMETRIC_DEFAULT" {
		return nil, kmsErrorf(KMSValidationException, "the emulator supports KeySpec SYMMETRIC_DEFAULT only")
	}
	if req.KeyUsage != "" && req.KeyUsage != "ENCRYPT_DECRYPT" {
		return nil, kmsErrorf(KMSValidationException, "the emulator supports KeyUsage ENCRYPT_DECRYPT only")
	}
	key := k.createKey(req.Description)
	return map[string]any{"KeyMetadata": key.metadata()}, nil
}

func (k *KMS) opListAliases(req *kmsRequest) (any, *KMSError) {
	var only string
	if req.KeyId != "" {
		key, err := k.resolve(req.KeyId, false)
		if err != nil {
			return nil, err
		}
		only = key.id
	}
	type alias struct{ AliasName, AliasArn, TargetKeyId string }
	list := []alias{}
	for _, name := range slices.Sorted(maps.Keys(k.aliases)) {
		id := k.aliases[name]
		if only == "" || id == only {
			list = append(list, alias{name, kmsARN("alias", strings.TrimPrefix(name, "alias/")), id})
		}
	}
	return map[string]any{"Aliases": list, "Truncated": false}, nil
}

func (k *KMS) opEncrypt(op string, req *kmsRequest) (any, *KMSError) {
	key, err := k.usableKey(op, req.KeyId)
	if err != nil {
		return nil, err
	}
	if err := checkAlgorithm(req.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	if n := len(req.Plaintext); n < 1 || n > 4096 {
		return nil, kmsErrorf(KMSValidationException, "Plaintext must be 1 to 4096 bytes, got %d", n)
	}
	return map[string]any{
		"CiphertextBlob":      key.seal(req.Plaintext, req.EncryptionContext),
		"KeyId":               key.arn,
		"EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
	}, nil
}

func (k *KMS) opGenerateDataKey(op string, req *kmsRequest) (any, *KMSError) {
	key, err := k.usableKey(op, req.KeyId)
	if err != nil {
		return nil, err
	}
	var n int
	switch {
	case req.KeySpec != "" && req.NumberOfBytes != nil:
		return nil, kmsErrorf(KMSValidationException, "specify either KeySpec or NumberOfBytes, not both")
	case req.KeySpec == "AES_256":
		n = 32
	case req.KeySpec == "AES_128":
		n = 16
	case req.KeySpec != "":
		return nil, kmsErrorf(KMSValidationException, "KeySpec must be AES_256 or AES_128, got %q", req.KeySpec)
	case req.NumberOfBytes == nil:
		return nil, kmsErrorf(KMSValidationException, "specify KeySpec or NumberOfBytes")
	case *req.NumberOfBytes < 1 || *req.NumberOfBytes > 1024:
		return nil, kmsErrorf(KMSValidationException, "NumberOfBytes must be 1 to 1024, got %d", *req.NumberOfBytes)
	default:
		n = *req.NumberOfBytes
	}
	plaintext := make([]byte, n)
	rand.Read(plaintext)
	return map[string]any{
		"CiphertextBlob": key.seal(plaintext, req.EncryptionContext),
		"Plaintext":      plaintext,
		"KeyId":          key.arn,
	}, nil
}

func (k *KMS) opDecrypt(op string, req *kmsRequest) (any, *KMSError) {
	if err := checkAlgorithm(req.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	id, ok := blobKeyID(req.CiphertextBlob)
	if !ok {
		return nil, &KMSError{Status: http.StatusBadRequest, Type: KMSInvalidCiphertextException}
	}
	key := k.keys[id]
	if key == nil {
		return nil, kmsErrorf(KMSNotFoundException, "Key '%s' does not exist", kmsARN("key", id))
	}
	k.keyCalls[[2]string{op, key.id}]++
	if req.KeyId != "" {
		named, err := k.resolve(req.KeyId, true)
		if err != nil {
			return nil, err
		}
		if named != key {
			return nil, kmsErrorf(KMSIncorrectKeyException, "The key ID in the request does not identify a KMS key that can perform this operation.")
		}
	}
	if err := key.usable(); err != nil {
		return nil, err
	}
	plaintext, ok := key.open(req.CiphertextBlob, req.EncryptionContext)
	if !ok {
		return nil, &KMSError{Status: http.StatusBadRequest, Type: KMSInvalidCiphertextException}
	}
	return map[string]any{
		"Plaintext":           plaintext,
		"KeyId":               key.arn,
		"EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
	}, nil
}

// createKey makes a new enabled key; k.mu is held.
func (k *KMS) createKey(description string) *kmsKey {
	var material [32]byte
	rand.Read(material[:])
	block, err := aes.NewCipher(material[:])
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	clear(material[:])
	id := newUUID()
	key := &kmsKey{
		id:          id,
		arn:         kmsARN("key", id),
		description: description,
		created:     time.Now(),
		state:       KMSKeyEnabled,
		aead:        aead,
	}
	k.keys[id] = key
	return key
}

// createAlias implements CreateAlias; k.mu is held.
func (k *KMS) createAlias(alias, keyID string) *KMSError {
	if !strings.HasPrefix(alias, "alias/") || len(alias) == len("alias/") || strings.HasPrefix(alias, "alias/aws/") {
		return kmsErrorf(KMSValidationException, "AliasName must begin with alias/ and not with alias/aws/")
	}
	if _, taken := k.aliases[alias]; taken {
		return kmsErrorf(KMSAlreadyExistsException, "An alias with the name %s already exists", kmsARN("alias", alias[len("alias/"):]))
	}
	key, err := k.resolve(keyID, false)
	if err != nil {
		return err
	}
	k.aliases[alias] = key.id
	return nil
}

// setEnabled implements DisableKey and EnableKey for the Go API.
func (k *KMS) setEnabled(keyID string, enabled bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	key, err := k.resolve(keyID, false)
	if err != nil {
		return err
	}
	if err := key.setEnabled(enabled); err != nil {
		return err
	}
	return nil
}

// scheduleDeletion implements ScheduleKeyDeletion; k.mu is held. It
// returns the key it found even when it refuses.
func (k *KMS) scheduleDeletion(keyID string, days int) (*kmsKey, *KMSError) {
	key, err := k.resolve(keyID, false)
	if err != nil {
		return nil, err
	}
	if days < 7 || days > 30 {
		return key, kmsErrorf(KMSValidationException, "PendingWindowInDays must be 7 to 30, got %d", days)
	}
	if key.state == KMSKeyPendingDeletion {
		return key, kmsErrorf(KMSInvalidStateException, "%s is pending deletion.", key.arn)
	}
	key.state = KMSKeyPendingDeletion
	key.deletion = time.Now().Add(time.Duration(days) * 24 * time.Hour)
	return key, nil
}

// usableKey resolves keyID for op (Encrypt, GenerateDataKey), counts the
// call and checks the key's state; k.mu is held.
func (k *KMS) usableKey(op, keyID string) (*kmsKey, *KMSError) {
	key, err := k.resolve(keyID, true)
	if err != nil {
		return nil, err
	}
	k.keyCalls[[2]string{op, key.id}]++
	if err := key.usable(); err != nil {
		return nil, err
	}
	return key, nil
}

// resolve finds the key keyID names: a key id or key ARN, and when
// aliases is true also an alias name or alias ARN. k.mu is held.
func (k *KMS) resolve(keyID string, aliases bool) (*kmsKey, *KMSError) {
	if keyID == "" {
		return nil, kmsErrorf(KMSValidationException, "KeyId is required")
	}
	name := keyID
	if rest, ok := strings.CutPrefix(keyID, "arn:aws:kms:"+KMSRegion+":"+KMSAccount+":"); ok {
		name = rest
		if a, ok := strings.CutPrefix(rest, "alias/"); ok {
			name = "alias/" + a
		} else if id, ok := strings.CutPrefix(rest, "key/"); ok {
			name = id
		} else {
			return nil, kmsErrorf(KMSNotFoundException, "Invalid keyId %s", keyID)
		}
	} else if strings.HasPrefix(keyID, "arn:") {
		return nil, kmsErrorf(KMSNotFoundException, "Invalid arn %s", keyID)
	}
	if a, ok := strings.CutPrefix(name, "alias/"); ok {
		id, found := k.aliases[name]
		if !aliases || !found {
			return nil, kmsErrorf(KMSNotFoundException, "Alias %s is not found.", kmsARN("alias", a))
		}
		name = id
	}
	key := k.keys[name]
	if key == nil {
		return nil, kmsErrorf(KMSNotFoundException, "Key '%s' does not exist", kmsARN("key", name))
	}
	return key, nil
}

// setEnabled enables or disables the key, unless it is pending deletion.
func (key *kmsKey) setEnabled(enabled bool) *KMSError {
	if key.state == KMSKeyPendingDeletion {
		return kmsErrorf(KMSInvalidStateException, "%s is pending deletion.", key.arn)
	}
	key.state = KMSKeyDisabled
	if enabled {
		key.state = KMSKeyEnabled
	}
	return nil
}

// usable returns the error KMS gives for using a key in its state.
func (key *kmsKey) usable() *KMSError {
	switch key.state {
	case KMSKeyEnabled:
		return nil
	case KMSKeyDisabled:
		return kmsErrorf(KMSDisabledException, "%s is disabled.", key.arn)
	default:
		return kmsErrorf(KMSInvalidStateException, "%s is pending deletion.", key.arn)
	}
}

// metadata is the key's KeyMetadata.
func (key *kmsKey) metadata() map[string]any {
	m := map[string]any{
		"AWSAccountId":          KMSAccount,
		"KeyId":                 key.id,
		"Arn":                   key.arn,
		"CreationDate":          epoch(key.created),
		"Enabled":               key.state == KMSKeyEnabled,
		"Description":           key.description,
		"KeyUsage":              "ENCRYPT_DECRYPT",
		"KeyState":              key.state,
		"Origin":                "AWS_KMS",
		"KeyManager":            "CUSTOMER",
		"KeySpec":               "SYMMETRIC_DEFAULT",
		"CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
		"EncryptionAlgorithms":  []string{"SYMMETRIC_DEFAULT"},
		"MultiRegion":           false,
	}
	if key.state == KMSKeyPendingDeletion {
		m["DeletionDate"] = epoch(key.deletion)
	}
	return m
}

// blobFormat is the first byte of every CiphertextBlob.
const blobFormat = 0x01

// seal makes a CiphertextBlob (see KMS for the format).
func (key *kmsKey) seal(plaintext []byte, ec map[string]string) []byte {
	blob := append([]byte{blobFormat, byte(len(key.id))}, key.id...)
	header := len(blob)
	blob = append(blob, make([]byte, 12)...)
	rand.Read(blob[header:])
	return key.aead.Seal(blob, blob[header:], plaintext, blobAAD(blob[:header], ec))
}

// open authenticates and decrypts a CiphertextBlob under ec.
func (key *kmsKey) open(blob []byte, ec map[string]string) ([]byte, bool) {
	header := 2 + int(blob[1])
	nonce := blob[header : header+12]
	plaintext, err := key.aead.Open(nil, nonce, blob[header+12:], blobAAD(blob[:header], ec))
	return plaintext, err == nil
}

// blobKeyID returns the key id a well-formed CiphertextBlob names.
func blobKeyID(blob []byte) (string, bool) {
	if len(blob) < 2 || blob[0] != blobFormat {
		return "", false
	}
	header := 2 + int(blob[1])
	if len(blob) < header+12+16 {
		return "", false
	}
	return string(blob[2:header]), true
}

// blobAAD is the associated data of a blob: its header, then the
// encryption context's pairs sorted by name, each string prefixed with its
// length (uint32 BE). The order of a JSON object does not matter to KMS,
// so it must not matter here.
func blobAAD(header []byte, ec map[string]string) []byte {
	aad := slices.Clone(header)
	for _, name := range slices.Sorted(maps.Keys(ec)) {
		aad = binary.BigEndian.AppendUint32(aad, uint32(len(name)))
		aad = append(aad, name...)
		aad = binary.BigEndian.AppendUint32(aad, uint32(len(ec[name])))
		aad = append(aad, ec[name]...)
	}
	return aad
}

// checkAlgorithm refuses any algorithm but the symmetric default.
func checkAlgorithm(alg string) *KMSError {
	if alg != "" && alg != "SYMMETRIC_DEFAULT" {
		return kmsErrorf(KMSValidationException, "the emulator supports EncryptionAlgorithm SYMMETRIC_DEFAULT only")
	}
	return nil
}

// kmsARN is the emulator's ARN of a resource ("key" or "alias") and name.
func kmsARN(resource, name string) string {
	return "arn:aws:kms:" + KMSRegion + ":" + KMSAccount + ":" + resource + "/" + name
}

// epoch is t as KMS's JSON timestamps: seconds since 1970 as a number.
func epoch(t time.Time) float64 { return float64(t.UnixMilli()) / 1e3 }

// newUUID returns a random (version 4) UUID, the form of KMS key ids.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
