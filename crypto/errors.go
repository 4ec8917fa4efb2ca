package crypto

import "errors"

// ErrDecrypt is the one error a value that cannot be opened produces: a
// tampered or truncated value, a value sealed for another tenant, table or
// column, a key version the tenant does not have, a shredded key. It never
// says which, so that neither a log line nor a client can use it as an
// oracle; proxy adds the column name and nothing else.
var ErrDecrypt = errors.New("crypto: value cannot be decrypted")

// ErrKeyNotFound is what a KeySource returns when it has no such key: no
// version at all for Active, or not the version asked for.
var ErrKeyNotFound = errors.New("crypto: data key not found")

// ErrKeyShredded is what a KeySource returns when the key existed and was
// destroyed. Writes for a shredded tenant fail with it; reads of its values
// fail with ErrDecrypt.
var ErrKeyShredded = errors.New("crypto: data key shredded")

// ErrUnwrap is what a Provider returns when a wrapped data key does not
// authenticate under its key-encryption key: the wrong master key, the wrong
// key context, or a corrupted row. Unlike ErrDecrypt it is an operational
// fault to log loudly, not a property of one value.
var ErrUnwrap = errors.New("crypto: data key cannot be unwrapped")

// ErrNoTenant is returned by a Keyring without a tenant. Sessions without a
// tenant see ciphertext; they never seal, open or index.
var ErrNoTenant = errors.New("crypto: keyring has no tenant")

// ErrWouldWait is what the KeyCache returns, under a context made by
// NoWait, instead of asking the KeySource or the Provider: the key is not
// cached, or a seal needs a reservation first. Nothing is loaded or
// counted; the caller asks again where it may wait.
var ErrWouldWait = errors.New("crypto: the key is not cached and the caller may not wait")
