package crypto

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"slices"
)

// The master key file holds the local KEK as 64 lower- or upper-case hex
// digits, optionally followed by one newline, and nothing else. Hex rather
// than raw bytes so that it survives being pasted into a secret store or an
// environment; `pgcloak keys init-local` (WriteLocalMasterKey) writes one.
const masterKeyHexLen = 2 * KeySize

// LocalProvider is the embedded key provider: its KEK is a 256-bit master
// key read from a file, and it wraps data keys with AES-256-GCM.
//
// A wrapped key is
//
//	0x01 | nonce (12) | AES-256-GCM(master key, data key) (32) | tag (16)
//
// with the key context as associated data: FormatV1 followed by the pairs of
// KeyContext.EncryptionContext sorted by name, each name and value prefixed
// with its length as a uint32 BE, exactly as KMS would bind them. A key
// wrapped for one tenant, purpose or class does not unwrap for another.
//
// LocalProvider is immutable and safe for concurrent use.
type LocalProvider struct {
	aead  cipher.AEAD
	kekID string
}

// wrappedLocalSize is the length of a key wrapped by LocalProvider.
const wrappedLocalSize = 1 + NonceSize + KeySize + TagSize

// LoadLocalProvider reads the master key file at path. It refuses a file
// whose mode gives the group or others any access, naming the path and the
// mode; no error quotes the file's content.
func LoadLocalProvider(path string) (*LocalProvider, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("crypto: master key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("crypto: master key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("crypto: master key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("crypto: master key file %s has mode %04o; it must not be accessible to group or others (chmod 600 %s)", path, perm, path)
	}
	buf := make([]byte, masterKeyHexLen+2) // room to notice a longer file
	defer clear(buf)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("crypto: master key file: %w", err)
	}
	text := bytes.TrimSuffix(buf[:n], []byte("\n"))
	if len(text) != masterKeyHexLen {
		return nil, fmt.Errorf("crypto: master key file %s: want %d hex digits and an optional newline", path, masterKeyHexLen)
	}
	key := make([]byte, KeySize)
	defer clear(key)
	// hex.Decode's error quotes the offending byte: do not pass it on.
	if _, err := hex.Decode(key, text); err != nil {
		return nil, fmt.Errorf("crypto: master key file %s: want %d hex digits and an optional newline", path, masterKeyHexLen)
	}
	return NewLocalProvider(key)
}

// NewLocalProvider makes a LocalProvider from a 32-byte master key, which it
// does not keep (the AES key schedule is all that remains). Use it in tests
// and in `pgcloak demo`; servers load a file with LoadLocalProvider.
func NewLocalProvider(masterKey []byte) (*LocalProvider, error) {
	if len(masterKey) != KeySize {
		return nil, fmt.Errorf("crypto: master key must be %d bytes", KeySize)
	}
	block, err := aes.NewCipher(masterKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	// The KEK id is a fingerprint: it tells which master key wrapped a data
	// key (and so which file an operator needs) without revealing it.
	h := sha256.New()
	h.Write([]byte("pgcloak local kek id\x00"))
	h.Write(masterKey)
	return &LocalProvider{aead: aead, kekID: "local:" + hex.EncodeToString(h.Sum(nil)[:8])}, nil
}

// WriteLocalMasterKey creates path with a fresh random master key, readable
// and writable by its owner only (0600). It refuses to overwrite an existing
// file: a lost master key makes every wrapped key, and so every value,
// unreadable.
func WriteLocalMasterKey(path string) error {
	var key [KeySize]byte
	rand.Read(key[:])
	text := make([]byte, masterKeyHexLen+1)
	hex.Encode(text, key[:])
	text[masterKeyHexLen] = '\n'
	clear(key[:])
	defer clear(text)

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("crypto: master key file %s already exists; refusing to overwrite it", path)
		}
		return fmt.Errorf("crypto: create master key file: %w", err)
	}
	_, err = f.Write(text)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("crypto: write master key file: %w", err)
	}
	return nil
}

// KEKID is the id Wrap reports: "local:" and 16 hex digits of a hash of the
// master key.
func (p *LocalProvider) KEKID() string { return p.kekID }

// Wrap implements Provider.
func (p *LocalProvider) Wrap(ctx context.Context, kc KeyContext, plaintextKey []byte) ([]byte, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	if len(plaintextKey) != KeySize {
		return nil, "", fmt.Errorf("crypto: local provider: data key must be %d bytes", KeySize)
	}
	return p.wrap(kc, plaintextKey, nil), p.kekID, nil
}

// wrap seals key for kc with a random nonce, or with nonce when it is
// non-nil (tests, for fixed vectors).
func (p *LocalProvider) wrap(kc KeyContext, key, nonce []byte) []byte {
	out := make([]byte, 1+NonceSize, wrappedLocalSize)
	out[0] = FormatV1
	if nonce == nil {
		rand.Read(out[1:])
	} else {
		copy(out[1:], nonce)
	}
	return p.aead.Seal(out, out[1:1+NonceSize], key, localAAD(kc))
}

// Unwrap implements Provider. A wrapped key that does not authenticate for
// kc under this master key is ErrUnwrap.
func (p *LocalProvider) Unwrap(ctx context.Context, kc KeyContext, wrapped []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(wrapped) != wrappedLocalSize || wrapped[0] != FormatV1 {
		return nil, ErrUnwrap
	}
	key, err := p.aead.Open(make([]byte, 0, KeySize), wrapped[1:1+NonceSize], wrapped[1+NonceSize:], localAAD(kc))
	if err != nil {
		return nil, ErrUnwrap
	}
	return key, nil
}

// GenerateDataKey implements Provider.
func (p *LocalProvider) GenerateDataKey(ctx context.Context, kc KeyContext) ([]byte, []byte, string, error) {
	key := make([]byte, KeySize)
	rand.Read(key)
	wrapped, kekID, err := p.Wrap(ctx, kc, key)
	if err != nil {
		clear(key)
		return nil, nil, "", err
	}
	return key, wrapped, kekID, nil
}

// localAAD encodes kc as LocalProvider's associated data (see LocalProvider).
func localAAD(kc KeyContext) []byte {
	ec := kc.EncryptionContext()
	names := make([]string, 0, len(ec))
	for name := range ec {
		names = append(names, name)
	}
	slices.Sort(names)
	b := []byte{FormatV1}
	for _, name := range names {
		b = appendString(b, name)
		b = appendString(b, ec[name])
	}
	return b
}
