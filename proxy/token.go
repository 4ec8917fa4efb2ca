package proxy

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	pg_query "github.com/pganalyze/pg_query_go/v5"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/tenanttoken"
)

// Signed tenant tokens (SPEC §5.2).
//
// A session of a token role starts with no tenant and takes one from a
// token it presents with SET [LOCAL] pgcloak.tenant_token, RESET
// pgcloak.tenant_token or pg_catalog.set_config('pgcloak.tenant_token',
// ...). The proxy verifies the token and puts, in the token statement's
// place in the client's text, a statement of its own that pins the tenant
// upstream (keystore.NextStatement: pgcloak.pin_next() needs no round trip
// for a challenge), so the switch happens exactly where the client's
// statement stood, inside its transaction, in one round trip. The token
// never reaches PostgreSQL.
//
// That statement answers with one column named by the session's alias, a
// name no client can guess; the upstream goroutine takes that answer out of
// the stream and gives the client what PostgreSQL gives for the client's
// statement (CommandComplete SET, or set_config's row).
//
// Who knows the tenant. The client goroutine encrypts with the tenant of
// the token it last accepted; the upstream goroutine decrypts with the
// tenant of the last pin PostgreSQL confirmed, and knows when a
// transaction ends (and a local token with it). When the client goroutine
// starts a round after one that changed the tenant, it waits until every
// earlier round is answered and takes the upstream goroutine's view: the
// only wait is for clients that pipeline past a token.

// TokenVerifier verifies tenant tokens (package tenanttoken). The error for
// a bad token says why in its message, never quoting the token.
type TokenVerifier interface {
	VerifyToken(ctx context.Context, raw string) (TokenClaims, error)
}

// atOnceVerifier is a TokenVerifier that can verify a token without
// waiting (for a JWKS fetch), or say that it cannot (ok false). The relay
// loop verifies tokens only so; any other verification goes to the
// session's goroutines.
type atOnceVerifier interface {
	VerifyTokenAtOnce(raw string) (c TokenClaims, err error, ok bool)
}

// verifyToken verifies raw; on the relay loop's thread only where that
// cannot wait (errLoopWouldWait otherwise).
func (s *session) verifyToken(raw string) (TokenClaims, error) {
	if !s.onLoop {
		return s.srv.tokens.VerifyToken(context.Background(), raw)
	}
	if v, ok := s.srv.tokens.(atOnceVerifier); ok {
		if c, err, ok := v.VerifyTokenAtOnce(raw); ok {
			return c, err
		}
	}
	return TokenClaims{}, errLoopWouldWait
}

// TokenClaims is what the proxy uses of a verified token.
type TokenClaims struct {
	Tenant, Subject, ID string
	Expiry              time.Time
}

// tokenSetting is the setting a tenant token is presented as.
const tokenSetting = "pgcloak.tenant_token"

// tokenForm is how a client presented or dropped a token.
type tokenForm int

const (
	tokenSet       tokenForm = iota // SET [LOCAL] pgcloak.tenant_token = '...'
	tokenReset                      // RESET pgcloak.tenant_token, SET ... TO DEFAULT
	tokenSetConfig                  // SELECT [pg_catalog.]set_config('pgcloak.tenant_token', v, is_local)
)

// tokenStmt is one token statement of a client's text.
type tokenStmt struct {
	form  tokenForm
	local bool
	token string // the literal, or "" when param is set
	param int    // set_config's $n, 0 for a literal
}

// queryPiece is a statement of a simple Query: a token statement, or the
// text of others.
type queryPiece struct {
	text  string
	token *tokenStmt
}

// tokenQuery splits a simple Query that mentions tenant_token into its
// token statements and the runs of other statements between them. Any
// other use of the setting (SHOW, current_setting, inside a larger
// statement) is refused: it would send the token to PostgreSQL.
func tokenQuery(sql string) ([]queryPiece, error) {
	// The usual text, one plain token statement and nothing else, is one
	// statement: no split.
	if ts := plainTokenStatement(sql); ts != nil {
		return []queryPiece{{token: ts}}, nil
	}
	// Split with the parser (statement boundaries only: no parse tree
	// crosses from C), and parse just the statements that name the
	// setting: the others go to the rewriter, which caches their shapes.
	stmts, err := pg_query.SplitWithParser(sql, false)
	if err != nil {
		return nil, &clientError{code: pgerrcode.SyntaxError, msg: "could not parse a statement naming " + tokenSetting}
	}
	var pieces []queryPiece
	var run []string
	checked := 0 // statements of run known to run no code
	local, ended := false, false
	for _, text := range stmts {
		if ended {
			return nil, errAfterLocalEnd
		}
		if !containsFold(text, "tenant_token") {
			run = append(run, text)
			if local {
				var chains bool
				if ended, chains = mayEndTransaction(text); chains {
					return nil, errAfterLocalEnd
				}
			}
			continue
		}
		ts, err := parseTokenStatement(text)
		if err != nil {
			return nil, err
		}
		if ts == nil {
			return nil, tokenMisuse()
		}
		for ; checked < len(run); checked++ {
			if !runsNoCode(run[checked]) {
				return nil, errCodeBeforeToken
			}
		}
		checked = 0
		if len(run) > 0 {
			pieces = append(pieces, queryPiece{text: strings.Join(run, ";\n")})
			run = nil
		}
		pieces = append(pieces, queryPiece{token: ts})
		local = local || (ts.local && ts.form != tokenReset)
	}
	if len(run) > 0 {
		pieces = append(pieces, queryPiece{text: strings.Join(run, ";\n")})
	}
	return pieces, nil
}

// errAfterLocalEnd refuses a simple Query in which a statement follows the
// end of a transaction that a local token pinned, or that ends it AND
// CHAIN. Every transaction a
// Query starts has the same start time, which a local pin's proof names:
// in a later transaction of the same Query, SQL pgcloak cannot read (a
// function) could set the ended pin's settings again and PostgreSQL would
// take them, while pgcloak holds the local token ended.
var errAfterLocalEnd = &clientError{code: pgerrcode.FeatureNotSupported,
	msg: "in one query, nothing may follow the end of a transaction that set a local tenant token (COMMIT, ROLLBACK, END, PREPARE TRANSACTION, CALL), and it may not end AND CHAIN: send the rest in a query of its own"}

// mayEndTransaction reports whether a statement may end the transaction
// it runs in: COMMIT, END, ROLLBACK (not ROLLBACK TO), ABORT, PREPARE
// TRANSACTION, a CALL, whose procedure may commit, and a DO block; and
// whether it starts the next one at once (AND CHAIN), which then has the
// ended one's start time for as long as it lasts, past this query. The
// common statements that end nothing are known by their first word; any
// other text is parsed, and one pg_query cannot parse alone counts as
// ending and chaining.
func mayEndTransaction(text string) (ends, chains bool) {
	switch strings.ToLower(strings.TrimSpace(text)) {
	case "commit", "end", "rollback", "abort":
		return true, false // the one-query form's last statement, unparsed
	}
	switch strings.ToLower(firstWord(text)) {
	case "select", "insert", "update", "delete", "with", "values", "table", "set", "reset", "show",
		"savepoint", "release", "begin", "start", "declare", "fetch", "move", "close", "lock":
		return false, false
	}
	res, err := pg_query.Parse(text)
	if err != nil || len(res.Stmts) != 1 {
		return true, true
	}
	switch n := res.Stmts[0].Stmt.Node.(type) {
	case *pg_query.Node_TransactionStmt:
		switch n.TransactionStmt.Kind {
		case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT, pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
			return true, n.TransactionStmt.Chain
		case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
			return true, false
		}
	case *pg_query.Node_CallStmt, *pg_query.Node_DoStmt:
		return true, false
	}
	return false, false
}

// firstWord returns the letters that start text after white space.
func firstWord(text string) string {
	text = strings.TrimLeft(text, " \t\r\n\f")
	i := 0
	for i < len(text) && (text[i]|0x20 >= 'a' && text[i]|0x20 <= 'z') {
		i++
	}
	if i == 0 && len(text) > 0 {
		return text[:1]
	}
	return text[:i]
}

// errCodeBeforeToken refuses a simple Query in which a statement that may
// run code (a function, a trigger, a deferred constraint at COMMIT) comes
// before a token statement. pgcloak's pin takes the token statement's
// place in the same text, and PostgreSQL accepts a pin's MAC while that
// text is the current query (keystore.LiteralPin): code running before
// the pin could read the MAC from current_query() and pin the tenant
// first, so that pgcloak's own pin fails and pgcloak holds the session to
// have another tenant than PostgreSQL does. After the pin the MAC is
// spent; if the pin fails, nothing after it runs.
var errCodeBeforeToken = &clientError{code: pgerrcode.FeatureNotSupported,
	msg: "in one query, a tenant token statement may follow only BEGIN, START TRANSACTION, SAVEPOINT, RELEASE, ROLLBACK, SET and other token statements: send the statements before it in a query of their own"}

// runsNoCode reports whether a statement's text is one that runs no user
// code: BEGIN, START TRANSACTION, SAVEPOINT, RELEASE [SAVEPOINT],
// ROLLBACK [TO SAVEPOINT], ABORT, SET and RESET (not COMMIT, END or
// PREPARE TRANSACTION, which fire deferred triggers).
func runsNoCode(text string) bool {
	switch strings.ToLower(strings.TrimSpace(text)) {
	case "begin", "start transaction":
		return true
	}
	res, err := pg_query.Parse(text)
	if err != nil || len(res.Stmts) != 1 {
		return false
	}
	switch n := res.Stmts[0].Stmt.Node.(type) {
	case *pg_query.Node_TransactionStmt:
		switch n.TransactionStmt.Kind {
		case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN, pg_query.TransactionStmtKind_TRANS_STMT_START,
			pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT, pg_query.TransactionStmtKind_TRANS_STMT_RELEASE,
			pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK, pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
			return true
		}
	case *pg_query.Node_VariableSetStmt:
		return true
	}
	return false
}

// parseTokenStatement recognises one statement's text as a token
// statement; nil for any other.
func parseTokenStatement(text string) (*tokenStmt, error) {
	if ts := plainTokenStatement(text); ts != nil {
		return ts, nil
	}
	res, err := pg_query.Parse(text)
	if err != nil || len(res.Stmts) != 1 {
		return nil, &clientError{code: pgerrcode.SyntaxError, msg: "could not split a statement naming " + tokenSetting}
	}
	return tokenStatement(res.Stmts[0].Stmt)
}

func tokenMisuse() *clientError {
	return &clientError{code: pgerrcode.FeatureNotSupported,
		msg: tokenSetting + " can only be set with SET [LOCAL], RESET or pg_catalog.set_config() as a statement of its own"}
}

// tokenStatement recognises a token statement; nil for any other.
func tokenStatement(n *pg_query.Node) (*tokenStmt, error) {
	if vs := n.GetVariableSetStmt(); vs != nil {
		if !strings.EqualFold(vs.Name, tokenSetting) {
			return nil, nil
		}
		switch vs.Kind {
		case pg_query.VariableSetKind_VAR_RESET, pg_query.VariableSetKind_VAR_SET_DEFAULT:
			return &tokenStmt{form: tokenReset, local: vs.IsLocal}, nil
		case pg_query.VariableSetKind_VAR_SET_VALUE:
			if len(vs.Args) == 1 {
				if c := vs.Args[0].GetAConst(); c != nil && c.GetSval() != nil {
					return &tokenStmt{form: tokenSet, local: vs.IsLocal, token: c.GetSval().Sval}, nil
				}
			}
			return nil, &clientError{code: pgerrcode.InvalidParameterValue, msg: "SET " + tokenSetting + " takes one string literal"}
		}
		return nil, tokenMisuse()
	}
	sel := n.GetSelectStmt()
	if sel == nil || len(sel.TargetList) != 1 || len(sel.FromClause) > 0 || sel.WhereClause != nil ||
		sel.WithClause != nil || len(sel.GroupClause) > 0 || sel.HavingClause != nil || sel.Op != pg_query.SetOperation_SETOP_NONE ||
		len(sel.SortClause) > 0 || sel.LimitCount != nil || sel.LimitOffset != nil || len(sel.DistinctClause) > 0 {
		return nil, nil
	}
	rt := sel.TargetList[0].GetResTarget()
	if rt == nil || rt.Name != "" {
		return nil, nil
	}
	fc := rt.Val.GetFuncCall()
	if fc == nil || len(fc.Args) != 3 || !isSetConfig(fc.Funcname) {
		return nil, nil
	}
	if name, ok := stringConst(fc.Args[0]); !ok || !strings.EqualFold(name, tokenSetting) {
		return nil, nil
	}
	local, ok := boolConst(fc.Args[2])
	if !ok {
		return nil, &clientError{code: pgerrcode.FeatureNotSupported, msg: "set_config of " + tokenSetting + " needs a constant is_local (true or false)"}
	}
	ts := &tokenStmt{form: tokenSetConfig, local: local}
	v := fc.Args[1]
	if tc := v.GetTypeCast(); tc != nil {
		v = tc.Arg
	}
	if p := v.GetParamRef(); p != nil {
		ts.param = int(p.Number)
		return ts, nil
	}
	if tok, ok := stringConst(v); ok {
		ts.token = tok
		return ts, nil
	}
	return nil, &clientError{code: pgerrcode.FeatureNotSupported, msg: "set_config of " + tokenSetting + " takes a string literal or a parameter"}
}

func isSetConfig(name []*pg_query.Node) bool {
	var parts []string
	for _, n := range name {
		parts = append(parts, n.GetString_().GetSval())
	}
	switch len(parts) {
	case 1:
		return parts[0] == "set_config"
	case 2:
		return parts[0] == "pg_catalog" && parts[1] == "set_config"
	}
	return false
}

func stringConst(n *pg_query.Node) (string, bool) {
	if tc := n.GetTypeCast(); tc != nil {
		n = tc.Arg
	}
	if c := n.GetAConst(); c != nil && c.GetSval() != nil {
		return c.GetSval().Sval, true
	}
	return "", false
}

func boolConst(n *pg_query.Node) (bool, bool) {
	if c := n.GetAConst(); c != nil {
		if b := c.GetBoolval(); b != nil {
			return b.Boolval, true
		}
	}
	if s, ok := stringConst(n); ok {
		switch strings.ToLower(s) {
		case "t", "true", "on", "yes", "1":
			return true, true
		case "f", "false", "off", "no", "0":
			return false, true
		}
	}
	return false, false
}

// tokenState is the client goroutine's side of a token session.
type tokenState struct {
	// ranRound is the round (upstreamOut.syncs+1) in which the client
	// goroutine last sent an Execute that may leave rows to read on: with
	// a row limit, or of a text that names DECLARE. holdRound is the last
	// round that sent one or a Query that may (mayHoldRows).
	holdRound int64
	ranRound  int64
	alias     string // the column name of the proxy's pin statements
	challenge int64  // the session's challenge (pgcloak.pin_challenge())
	n         int64  // the last pin number used
	// session is the tenant of the session-level token, proof its proof;
	// prev* are the ones before it, which a ROLLBACK brings back.
	session, proof         string
	prevSession, prevProof string
	// markerMoved: a pin was made since the session token's (a local
	// one, or one a ROLLBACK undid), so PostgreSQL's marker no longer
	// matches the session token, which must be pinned again.
	markerMoved bool
	// changed is the round (upstreamOut.syncs after it is sent) of the
	// last token statement; settled is false until the upstream
	// goroutine's view has been taken after it.
	changed int64
	settled bool
	// clearOwed: a refused token left the session without a tenant, and
	// the upstream pin must be cleared when PostgreSQL lets us.
	// clearBlocked: the last try found the transaction aborted (see
	// refuseUntilCleared).
	clearOwed, clearBlocked bool
	// spent is the highest pin_next() number known spent upstream, n the
	// last one sent; burnBlocked: spending the rest waits for the aborted
	// transaction to end (burnUnspent).
	spent       int64
	burnBlocked bool
	// justParsed is the token statement whose Parse the client's last
	// message was, afterParse the one the message before the current
	// one parsed (handleClientMessage moves it): a Bind right after its
	// statement's Parse needs no Parse again (reprepareToken).
	justParsed, afterParse *preparedStatement
	// exitPortals are the portals bound, while the proxy waits for an
	// aborted transaction to end, to a statement that ends it, with the
	// round of their Bind (refuseUntilCleared).
	exitPortals map[string]int64
	// base and baseProof are a mode jwt session's login tenant and its
	// proof, startup parameters upstream: what DISCARD ALL and RESET
	// ALL come back to.
	base, baseProof string
	// midRound: the client has sent part of a round (no Sync yet).
	midRound bool
	// awaitExec is the pin of the token statement just bound (always to
	// the unnamed portal): only a Describe of that portal and its Execute
	// may follow, and the proxy closes the portal after the Execute, so no
	// token portal outlives its message pair (token.go, checkTokenPortal).
	awaitExec *tokenPin
}

// tokenUpstream is the upstream goroutine's side, shared under mu.
type tokenUpstream struct {
	mu       sync.Mutex
	cond     *sync.Cond
	answered int64 // ReadyForQuery messages received
	queue    []*tokenPin
	cur      *tokenPin // the pin whose answer is arriving
	session  string    // tenant of the confirmed session-level pin
	local    string    // tenant of a confirmed local pin in the open transaction
	hasLocal bool
	// txSession: a session pin confirmed in a transaction waits for its
	// end (COMMIT keeps it); prevSession is what a rollback restores.
	txSession   bool
	prevSession string
	// dirty: the client goroutine changed the tenant (after a refused
	// token, or DISCARD); the upstream goroutine takes it up next.
	dirty atomic.Bool
	// failed: an error came in the round now answered (upstream goroutine).
	failed bool
	// status is the last ReadyForQuery's transaction status.
	status byte
	// rolledBack: a ROLLBACK tag came in the round now answered (it may
	// also be ROLLBACK TO SAVEPOINT, so it ends nothing by itself).
	rolledBack bool
	// badAnswer: an answer to a pin was not the pin's; the session ends.
	badAnswer atomic.Bool
	// uncertain: how a transaction that set a session token ended was
	// guessed, not seen (askTenant).
	uncertain bool
	// execPending: a token statement's portal is bound and its rows may
	// come (upstream goroutine).
	execPending bool
	// ran: the open transaction may hold rows to read on (upstream
	// goroutine; a token switch is then refused, see errSwitchAfterRun).
	ran bool
	// spent is the highest pin_next() number of a pin PostgreSQL
	// confirmed (see burnUnspent).
	spent int64
	// idle counts the ReadyForQuery messages that found the session
	// idle: another client's transaction may have run since (reprepare).
	idle atomic.Int64
}

// tokenPin is one token statement on its way: what the client is answered
// and what the upstream goroutine applies when PostgreSQL confirms it.
type tokenPin struct {
	round  int64
	form   tokenForm
	local  bool
	tenant string // "" for a reset
	proof  string // the pin's proof
	value  string // set_config's answer: the token as given
	alias  string // a simple Query's pin: its column name
	seen   bool   // its row arrived and was checked
	n      int64  // the pin_next() number it spends (0: none)
}

func (u *tokenUpstream) tenant() string {
	if u.hasLocal {
		return u.local
	}
	return u.session
}

// newTokenAlias returns a column name no client can guess.
func newTokenAlias() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return pinAliasPrefix + hex.EncodeToString(b[:]) + ":", nil
}

// pinAliasPrefix starts the column names of the proxy's pin statements,
// which a token session's own SQL may not use.
const pinAliasPrefix = "pgcloak:pin:"

var errPinAlias = &clientError{code: pgerrcode.InsufficientPrivilege, msg: "names starting with " + pinAliasPrefix + " are reserved for pgcloak"}

// quotedAlias is the column name of the proxy's own pin statements whose
// answers are matched by what they answer (the extended protocol's
// Describe and Execute, the proxy's internal calls), quoted.
func (t *tokenState) quotedAlias() string { return `"` + t.alias + `"` }

// startTokens prepares a token session: it draws the challenge its pins
// name. It runs during startup, before the client's first ReadyForQuery.
func (s *session) startTokens() error {
	alias, err := newTokenAlias()
	if err != nil {
		return err
	}
	s.tok.alias = alias
	s.tokUp.cond = sync.NewCond(&s.tokUp.mu)
	if s.srv.pinner == nil {
		return nil
	}
	c, err := s.internalQuery(keystore.ChallengeStatement)
	if err != nil {
		return err
	}
	s.tok.challenge, err = strconv.ParseInt(string(c), 10, 64)
	if err != nil {
		return fmt.Errorf("token session: pgcloak.pin_challenge() returned %q", c)
	}
	return nil
}

// settleTenant runs in the client goroutine before each message of a token
// session: in the first round after a token statement it waits for every
// earlier round to be answered and takes the tenant PostgreSQL confirmed.
func (s *session) settleTenant() error {
	if s.tok.settled || s.upstreamOut.syncs < s.tok.changed {
		return nil
	}
	if s.onLoop && s.settleWouldWait() {
		return errLoopWouldWait // nothing changed yet
	}
	if err := s.awaitAnswers(); err != nil {
		return err
	}
	u := &s.tokUp
	u.mu.Lock()
	tenant, session, hasLocal, uncertain, open := u.tenant(), u.session, u.hasLocal, u.uncertain, u.txSession
	u.mu.Unlock()
	if uncertain {
		if s.tok.midRound {
			return nil // asked between rounds only
		}
		return s.askTenant()
	}
	s.tenant = tenant
	t := &s.tok
	if t.session != session {
		// A ROLLBACK undid the session token set in its transaction.
		if session != "" && session == t.prevSession {
			t.session, t.proof = t.prevSession, t.prevProof
		} else {
			t.session, t.proof = "", ""
		}
		t.markerMoved = true
	}
	// While a local token lasts, or a session token waits for its
	// transaction's end, every round must ask again: only the upstream
	// goroutine sees the transaction end.
	t.settled = !hasLocal && !open
	if !hasLocal && t.session != "" && t.markerMoved {
		if t.midRound {
			t.settled = false // between rounds only
			return nil
		}
		return s.repinSession()
	}
	return nil
}

// awaitAnswers flushes what was sent upstream and waits until the upstream
// goroutine has taken the answers to every round sent (errDone when the
// session ends meanwhile). Nothing else is sent meanwhile, so its view
// stays as it is after.
func (s *session) awaitAnswers() error {
	if err := s.upstreamOut.flush(); err != nil {
		return fmt.Errorf("upstream write: %w", err)
	}
	u := &s.tokUp
	u.mu.Lock()
	for u.answered < s.upstreamOut.syncs && !s.closed.Load() {
		u.cond.Wait()
	}
	u.mu.Unlock()
	if s.closed.Load() {
		return errDone
	}
	return nil
}

// settleWouldWait reports whether settleTenant would wait, which the relay
// loop's thread may not: for upstream's answers to what was sent, or for
// PostgreSQL (askTenant, repinSession). It reads what settleTenant reads
// and changes nothing.
func (s *session) settleWouldWait() bool {
	u, t := &s.tokUp, &s.tok
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.answered < s.upstreamOut.syncs {
		return true
	}
	if u.uncertain {
		return !t.midRound
	}
	session, moved := t.session, t.markerMoved
	if t.session != u.session {
		moved, session = true, ""
		if u.session != "" && u.session == t.prevSession {
			session = t.prevSession
		}
	}
	return !u.hasLocal && session != "" && moved && !t.midRound
}

// askTenant takes the session's tenant from PostgreSQL when the upstream
// goroutine could only guess how a transaction that set a session token
// ended (no COMMIT tag: a ROLLBACK, an error after a procedure that
// committed): pgcloak.current_tenant() says which pin holds.
func (s *session) askTenant() error {
	got, code, err := s.callInternal("SELECT COALESCE(pgcloak.current_tenant(), '')")
	if err != nil {
		return err
	}
	if code != "" {
		return fmt.Errorf("reading the tenant PostgreSQL pins failed upstream with SQLSTATE %s", code)
	}
	t, u := &s.tok, &s.tokUp
	switch truth := string(got); {
	case truth == "":
		// No verified tenant: drop the pin too. A ROLLBACK does not undo
		// the marker (a sequence), so settings that SQL pgcloak cannot
		// read set again would verify the rolled-back pin once more.
		_, code, err := s.callInternal(keystore.ClearStatement(t.quotedAlias()), []byte(s.decl.tenancyCfg.Setting), []byte(keystore.ProofSetting))
		if err != nil {
			return err
		}
		if code != "" {
			return fmt.Errorf("clearing the tenant after a rolled-back token failed upstream with SQLSTATE %s", code)
		}
		s.tenant, t.session, t.proof = "", "", ""
	case truth == t.session:
	case truth == t.prevSession:
		t.session, t.proof = t.prevSession, t.prevProof
	default:
		return errors.New("token session: PostgreSQL pins a tenant the proxy did not pin last")
	}
	s.tenant, t.markerMoved, t.settled = t.session, false, true
	u.mu.Lock()
	u.session, u.hasLocal, u.local, u.txSession, u.uncertain = t.session, false, "", false, false
	u.dirty.Store(true)
	u.mu.Unlock()
	return nil
}

// handleTokenQuery forwards a simple Query that presents or drops a
// tenant token, with each token statement replaced by the proxy's pin.
//
// On the relay loop's thread it may give up (errLoopWouldWait) at a token
// it cannot verify at once, a statement whose plan is not cached or a key
// that is not: the session's tenant and token state are then as they were,
// its audit events are dropped (auditEvent), and the goroutines handle the
// Query again.
func (s *session) handleTokenQuery(q *pgproto3.Query) error {
	if s.onLoop {
		tok, tenant := s.tok, s.tenant
		err := s.tokenQuery(q)
		if err == errLoopWouldWait {
			s.tok, s.tenant = tok, tenant
		}
		return err
	}
	return s.tokenQuery(q)
}

// tokenQuery is handleTokenQuery's work.
func (s *session) tokenQuery(q *pgproto3.Query) error {
	pieces, err := tokenQuery(q.String)
	if err != nil {
		s.track(q)
		return s.refuse(err)
	}
	for _, p := range pieces {
		if p.token == nil {
			continue
		}
		if err := s.switchAllowed(); err != nil {
			if err == errLoopWouldWait || err == errDone {
				return err
			}
			s.track(q)
			return s.refuse(err)
		}
		break
	}
	if len(pieces) == 1 && pieces[0].token != nil && pieces[0].token.form == tokenSet && pieces[0].token.local && s.idle() {
		// Outside a transaction block SET LOCAL has no effect, and
		// PostgreSQL says so.
		for _, msg := range []pgproto3.BackendMessage{
			&pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: pgerrcode.NoActiveSQLTransaction,
				Message: "SET LOCAL can only be used in transaction blocks"},
			&pgproto3.CommandComplete{CommandTag: []byte("SET")},
			&pgproto3.ReadyForQuery{TxStatus: 'I'},
		} {
			if err := s.sendClient(msg); err != nil {
				return err
			}
		}
		return s.flushClient()
	}
	var b strings.Builder
	var pins []*tokenPin
	for _, p := range pieces {
		if b.Len() > 0 {
			b.WriteString(";\n")
		}
		if p.token == nil {
			text, err := s.rewriteStatements(p.text)
			if err == errLoopWouldWait {
				return err
			}
			if err != nil {
				s.track(q)
				return s.refuse(err)
			}
			b.WriteString(text)
			continue
		}
		if p.token.param != 0 {
			s.track(q)
			return s.refuse(&clientError{code: pgerrcode.UndefinedParameter, msg: fmt.Sprintf("there is no parameter $%d", p.token.param)})
		}
		pin, sql, err := s.tokenPin(p.token, p.token.token, nil)
		if err == errLoopWouldWait {
			return err
		}
		if err != nil {
			s.track(q)
			return s.refuse(err)
		}
		s.applyClientPin(pin)
		pins = append(pins, pin)
		b.WriteString(sql)
	}
	round := s.upstreamOut.syncs + 1
	s.tokUp.mu.Lock()
	for _, pin := range pins {
		pin.round = round
		s.tokUp.queue = append(s.tokUp.queue, pin)
	}
	s.tokUp.mu.Unlock()
	s.tok.changed, s.tok.settled = round, false
	s.track(q)
	return s.upstreamOut.send(&pgproto3.Query{String: b.String()})
}

// tokenPin verifies a token statement's token and returns the pin that
// replaces it: as SQL with literals (simple protocol), or, with args set,
// as keystore's statement whose parameters are appended to *args.
func (s *session) tokenPin(ts *tokenStmt, raw string, args *[][]byte) (*tokenPin, string, error) {
	pin := &tokenPin{form: ts.form, local: ts.local, value: raw}
	setting := s.decl.tenancyCfg.Setting
	alias := s.tok.quotedAlias() // the extended protocol's: Describe answers are matched by statement
	if args == nil {
		// A simple Query's pin is recognised by its column name: one of
		// its own, which no client text can name in advance.
		a, err := newTokenAlias()
		if err != nil {
			return nil, "", err
		}
		pin.alias = a
		alias = `"` + a + `"`
	}
	if ts.form == tokenReset {
		if args != nil {
			*args = append(*args, []byte(setting), []byte(keystore.ProofSetting))
			return pin, keystore.ClearStatement(alias), nil
		}
		return pin, literalSQL(keystore.ClearStatement(alias), setting, keystore.ProofSetting), nil
	}
	claims, err := s.verifyToken(raw)
	if err == errLoopWouldWait {
		return nil, "", err // nothing changed yet
	}
	if err == nil && containsFold(claims.Tenant, keystore.PinWord) {
		// The tenant is written into the pin's text, where this word
		// marks the MAC PostgreSQL accepts (package tenanttoken refuses
		// it too; this holds for any TokenVerifier).
		err = &tenanttoken.Refusal{Reason: tenanttoken.ReasonMalformed}
	}
	if err != nil {
		reason := trimRefusal(err)
		id := s.auditIdentity()
		s.auditEvent(func() { s.srv.audit.l.TenantTokenRefused(id, reason) })
		s.tenant, s.tok.session, s.tok.proof = "", "", ""
		s.tok.clearOwed = true
		return nil, "", &clientError{code: pgerrcode.InvalidAuthorizationSpecification, msg: "tenant token refused: " + reason}
	}
	pin.tenant = claims.Tenant
	id := s.auditIdentity()
	id.Tenant = claims.Tenant
	s.auditEvent(func() { s.srv.audit.l.TenantTokenAccepted(id, claims.Subject, claims.ID, claims.Expiry, ts.local) })
	proof, err := keystore.NewProof(claims.Expiry.Unix())
	if err != nil {
		return nil, "", err
	}
	pin.proof = proof
	params := s.nextPinArgs(claims.Tenant, proof, ts.local)
	pin.n = s.tok.n
	if args != nil {
		*args = append(*args, params...)
		return pin, keystore.NextStatement(ts.local, alias), nil
	}
	strs := make([]string, len(params))
	for i, p := range params {
		strs[i] = string(p)
	}
	return pin, keystore.LiteralPin(strs[4], literalSQL(keystore.NextStatement(ts.local, alias), strs...)), nil
}

// applyClientPin makes pin the client goroutine's tenant from the point
// where its statement runs: in a simple Query at once (what follows it in
// the text runs after it), in the extended protocol at the Execute of its
// portal, never at the Bind.
func (s *session) applyClientPin(pin *tokenPin) {
	t := &s.tok
	switch {
	case pin.form == tokenReset:
		s.tenant, t.session, t.proof = "", "", ""
	case pin.local:
		s.tenant, t.markerMoved = pin.tenant, true
	default:
		t.prevSession, t.prevProof = t.session, t.proof
		t.session, t.proof, t.markerMoved = pin.tenant, pin.proof, false
		s.tenant = pin.tenant
	}
	t.changed, t.settled = s.upstreamOut.syncs+1, false
}

// pinAnswered checks the row a pin statement returned: the tenant and
// proof it set (a local proof gains the transaction's start). Anything
// else means the answer was not the pin's, and the session cannot go on.
func pinAnswered(pin *tokenPin, row *pgproto3.DataRow) error {
	if pin.form == tokenReset {
		if len(row.Values) == 1 && len(row.Values[0]) == 0 {
			return nil
		}
	} else if len(row.Values) == 1 && strings.HasPrefix(string(row.Values[0]), pin.tenant+pin.proof) {
		return nil
	}
	return errors.New("token session: the answer to a tenant pin is not the pin's")
}

// nextPinArgs are keystore.NextStatement's parameters for the next pin.
func (s *session) nextPinArgs(tenant, proof string, local bool) [][]byte {
	s.tok.n++
	n := s.tok.n
	var mac string
	if s.srv.pinner != nil {
		mac = s.srv.pinner.NextMAC(s.tok.challenge, n, local, tenant, proof)
	}
	return [][]byte{[]byte(tenant), []byte(proof), []byte(strconv.FormatInt(s.tok.challenge, 10)),
		[]byte(strconv.FormatInt(n, 10)), []byte(mac), []byte(s.decl.tenancyCfg.Setting), []byte(keystore.ProofSetting)}
}

// repinSession pins the session-level token's tenant again after a local
// token moved the marker, before the client's next statement runs.
func (s *session) repinSession() error {
	if s.tok.proof == "" {
		s.tenant, s.tok.session = "", ""
		s.tokUp.forget()
		return nil
	}
	args := s.nextPinArgs(s.tok.session, s.tok.proof, false)
	_, code, err := s.callInternal(keystore.NextStatement(false, s.tok.quotedAlias()), args...)
	if err != nil {
		return err
	}
	if code == pgerrcode.InFailedSQLTransaction {
		s.tok.settled = false // again after the client's next round
		return nil
	}
	if code != "" {
		return fmt.Errorf("pinning the session token's tenant again failed upstream with SQLSTATE %s", code)
	}
	s.tok.markerMoved = false
	s.tok.spent = max(s.tok.spent, s.tok.n)
	s.tenant = s.tok.session
	return nil
}

// burnUnspent spends upstream (pgcloak.pin_burn()) the numbers of the pins
// the proxy sent that PostgreSQL did not confirm: a pin that failed, or
// never ran because an earlier statement of its query or round failed. A
// literal pin's MAC stays readable in pg_stat_activity, and until the
// session's next pin it would pin that tenant again through a statement
// whose text holds it (a statement a DBA's function PREPAREd, run by a
// Bind): behind a transaction pooler, another client's next transaction
// on the connection pinned the tenant of a token it never had (found by
// review on 2026-12-08). It runs before every round after one that sent a
// pin; in an aborted transaction it waits, and only a lone ROLLBACK is
// taken meanwhile (refuseUntilCleared). When PostgreSQL refuses it for
// another reason (a hot standby) the session ends.
func (s *session) burnUnspent() error {
	if s.srv.pinner == nil || s.tok.n <= s.tok.spent {
		return nil
	}
	u := &s.tokUp
	if s.onLoop {
		u.mu.Lock()
		done := u.answered == s.upstreamOut.syncs && u.spent >= s.tok.n
		u.mu.Unlock()
		if !done {
			return errLoopWouldWait // nothing changed yet
		}
		s.tok.spent = s.tok.n
		return nil
	}
	if err := s.awaitAnswers(); err != nil {
		return err
	}
	u.mu.Lock()
	spent := u.spent
	u.mu.Unlock()
	n := s.tok.n
	if spent >= n {
		s.tok.spent = n
		return nil
	}
	code, err := s.burn(n)
	if err != nil {
		return err
	}
	s.tok.burnBlocked = code == pgerrcode.InFailedSQLTransaction
	switch {
	case s.tok.burnBlocked:
		return nil
	case code != "":
		return fmt.Errorf("token session: spending a tenant pin that did not complete failed upstream with SQLSTATE %s", code)
	}
	s.tok.spent = n
	return nil
}

// burn runs pgcloak.pin_burn(n); when the session is idle and read-only by
// default (the pin may have failed for that), in a transaction of its own
// that may write. It returns the SQLSTATE of a failure.
func (s *session) burn(n int64) (string, error) {
	arg := []byte(strconv.FormatInt(n, 10))
	_, code, err := s.callInternal(keystore.BurnStatement, arg)
	s.tokUp.mu.Lock()
	idle := s.tokUp.status == 'I'
	s.tokUp.mu.Unlock()
	if err != nil || code != pgerrcode.ReadOnlySQLTransaction || !idle {
		return code, err
	}
	if _, code, err = s.callInternal("BEGIN READ WRITE"); err != nil || code != "" {
		return code, err
	}
	_, code, err = s.callInternal(keystore.BurnStatement, arg)
	if err != nil {
		return code, err
	}
	end := "COMMIT"
	if code != "" {
		end = "ROLLBACK"
	}
	if _, endCode, err := s.callInternal(end); err != nil || endCode != "" {
		return cmp.Or(code, endCode), err
	}
	return code, nil
}

// tokenResponse runs in the upstream goroutine for every message of a
// token session: it takes the answers to the proxy's pins out of the
// stream, answers the client as PostgreSQL would have answered its token
// statement, and follows transaction ends. It returns the message to pass
// on (msg, or what stands for it), nil for none.
func (s *session) tokenResponse(msg pgproto3.BackendMessage) (pgproto3.BackendMessage, error) {
	u := &s.tokUp
	if u.dirty.Load() {
		u.mu.Lock()
		s.results.setTenant(u.tenant())
		u.dirty.Store(false)
		u.mu.Unlock()
	}
	if u.cur == nil && s.tracks {
		if out, done := s.extendedTokenResponse(msg); done {
			if u.badAnswer.Load() {
				return nil, errors.New("token session: the answer to a tenant pin is not the pin's")
			}
			return out, nil
		}
	}
	switch m := msg.(type) {
	case *pgproto3.RowDescription:
		if len(m.Fields) != 1 {
			return msg, nil
		}
		// Aliases are random per pin: a match anywhere in the queue is
		// that pin, and the pins before it were never reached.
		u.mu.Lock()
		matched := false
		for i, p := range u.queue {
			if string(m.Fields[0].Name) == p.alias {
				u.cur, u.queue, matched = p, u.queue[i+1:], true
				break
			}
		}
		u.mu.Unlock()
		if !matched {
			return msg, nil
		}
		return nil, nil
	case *pgproto3.DataRow:
		if u.cur != nil {
			if err := pinAnswered(u.cur, m); err != nil {
				return nil, err
			}
			u.cur.seen = true
			return nil, nil
		}
	case *pgproto3.CommandComplete:
		if u.cur == nil {
			s.noteTransactionTag(m.CommandTag)
			s.noteRan(m.CommandTag)
			return msg, nil
		}
		pin := u.cur
		u.cur = nil
		if !pin.seen {
			return nil, errors.New("token session: a tenant pin completed without its row")
		}
		s.applyPin(pin)
		return nil, s.answerToken(pin)
	case *pgproto3.ErrorResponse:
		u.cur = nil
		u.failed = true
	case *pgproto3.PortalSuspended:
		u.mu.Lock()
		u.ran = true
		u.mu.Unlock()
	case *pgproto3.ReadyForQuery:
		if m.TxStatus == 'I' {
			u.idle.Add(1)
		}
		u.mu.Lock()
		u.answered++
		if m.TxStatus == 'I' {
			u.ran = false
		}
		if m.TxStatus == 'I' {
			// A block open before this round ended without a COMMIT tag
			// (that would have settled it): rolled back. Otherwise an
			// implicit transaction commits unless an error or a ROLLBACK
			// came.
			explicit := u.status == 'T' || u.status == 'E'
			u.endTransaction(!explicit && !u.failed && !u.rolledBack)
		}
		u.failed, u.rolledBack = false, false
		u.status = m.TxStatus
		for len(u.queue) > 0 && u.queue[0].round <= u.answered {
			u.queue = u.queue[1:] // never reached: an error came first
		}
		u.cond.Broadcast()
		u.mu.Unlock()
	}
	return msg, nil
}

// extendedTokenResponse maps the answers to a token statement prepared
// through the extended protocol: a Describe shows the client's statement
// (no parameters but its own, no rows but set_config's), an Execute
// answers as the client's statement would, and its CommandComplete
// applies the pin. done is false for any other message.
func (s *session) extendedTokenResponse(msg pgproto3.BackendMessage) (pgproto3.BackendMessage, bool) {
	// Only these messages can answer a token statement; a DataRow only
	// between a token's BindComplete and its CommandComplete, so that rows
	// of other results cost no look at the pending queue.
	switch m := msg.(type) {
	case *pgproto3.BindComplete:
		if head := s.pending.peek(); head != nil && head.kind == pendBind && head.token != nil {
			s.tokUp.execPending = true
		}
	case *pgproto3.ErrorResponse, *pgproto3.ReadyForQuery:
		s.tokUp.execPending = false
	case *pgproto3.RowDescription, *pgproto3.CommandComplete:
		return s.tokenAnswer(msg)
	case *pgproto3.DataRow:
		if s.tokUp.execPending {
			return s.tokenAnswer(m)
		}
	}
	return msg, false
}

// tokenAnswer maps a RowDescription, DataRow or CommandComplete that may
// answer a token statement of the extended protocol (see
// extendedTokenResponse).
func (s *session) tokenAnswer(msg pgproto3.BackendMessage) (pgproto3.BackendMessage, bool) {
	head := s.pending.peek()
	if head == nil {
		return msg, false
	}
	switch m := msg.(type) {
	case *pgproto3.RowDescription:
		if head.kind != pendDescribe || len(m.Fields) != 1 {
			return msg, false
		}
		var form tokenForm
		switch {
		case head.prepared != nil && head.prepared.token != nil:
			form = head.prepared.token.form
		case head.token != nil:
			form = head.token.form
		default:
			return msg, false
		}
		if form != tokenSetConfig {
			return &pgproto3.NoData{}, true
		}
		m.Fields[0] = pgproto3.FieldDescription{Name: []byte("set_config"), DataTypeOID: pgtype.TextOID, DataTypeSize: -1, TypeModifier: -1, Format: m.Fields[0].Format}
		return m, true
	case *pgproto3.DataRow:
		if head.kind != pendExecute || head.token == nil {
			return msg, false
		}
		if err := pinAnswered(head.token, m); err != nil {
			s.tokUp.badAnswer.Store(true)
			return nil, true
		}
		head.token.seen = true
		if head.token.form != tokenSetConfig {
			return nil, true
		}
		m.Values = [][]byte{[]byte(head.token.value)}
		return m, true
	case *pgproto3.CommandComplete:
		if head.kind != pendExecute || head.token == nil {
			return msg, false
		}
		s.tokUp.execPending = false
		if !head.token.seen {
			s.tokUp.badAnswer.Store(true)
			return msg, true
		}
		s.applyPin(head.token)
		switch head.token.form {
		case tokenSet:
			m.CommandTag = []byte("SET")
		case tokenReset:
			m.CommandTag = []byte("RESET")
		}
		return m, true
	}
	return msg, false
}

// noteTransactionTag follows COMMIT and ROLLBACK inside a round.
// noteRan follows, from the command tags of the client's statements,
// whether the open transaction holds rows it read under its tenant that a
// later statement can still read: a cursor (DECLARE CURSOR) or a table
// made in it (CREATE TABLE: a temporary ON COMMIT DROP table, filled
// after). A suspended portal is followed in tokenResponse. A COMMIT (also
// AND CHAIN) starts afresh; ReadyForQuery says when a transaction ended.
func (s *session) noteRan(tag []byte) {
	u := &s.tokUp
	switch string(tag) {
	case "COMMIT":
		u.mu.Lock()
		u.ran = false
		u.mu.Unlock()
	case "DECLARE CURSOR", "CREATE TABLE":
		u.mu.Lock()
		u.ran = true
		u.mu.Unlock()
	}
}

// mayHoldRows reports whether a simple Query's text may leave rows to
// read on in its transaction: it names DECLARE (a cursor) or CREATE (a
// table).
func mayHoldRows(sql string) bool { return containsFold(sql, "declare") || containsFold(sql, "create") }

// errSwitchAfterRun refuses a token statement in a transaction that may
// hold rows read under the tenant of that moment, to be read on after the
// switch under the new one: an open cursor, a suspended portal, a table
// made in the transaction.
var errSwitchAfterRun = &clientError{code: pgerrcode.FeatureNotSupported,
	msg: "a tenant token cannot switch the tenant of a transaction that has opened a cursor, left a portal suspended or made a table: end the transaction first"}

// switchAllowed reports whether a token statement may switch the tenant
// now: the open transaction holds no rows of its tenant to read on (after
// every earlier round is answered, as the upstream goroutine saw it; in
// this round, as the client goroutine sent it). On the relay loop
// it gives up (errLoopWouldWait) rather than wait.
func (s *session) switchAllowed() error {
	if s.tok.ranRound == s.upstreamOut.syncs+1 {
		return errSwitchAfterRun
	}
	// Wait only for the answer to a round that may have left rows, so
	// that its tag is seen; waiting for every round would hang a session
	// whose count of answers a skipped message put out of step.
	u := &s.tokUp
	u.mu.Lock()
	wait := u.answered < s.tok.holdRound
	u.mu.Unlock()
	if wait && s.onLoop {
		return errLoopWouldWait
	}
	if wait {
		if err := s.upstreamOut.flush(); err != nil {
			return fmt.Errorf("upstream write: %w", err)
		}
	}
	u.mu.Lock()
	for u.answered < s.tok.holdRound && !s.closed.Load() {
		u.cond.Wait()
	}
	ran := u.ran
	u.mu.Unlock()
	if s.closed.Load() {
		return errDone
	}
	if ran {
		return errSwitchAfterRun
	}
	return nil
}

func (s *session) noteTransactionTag(tag []byte) {
	// ROLLBACK is also the tag of ROLLBACK TO SAVEPOINT, which ends no
	// transaction: only ReadyForQuery's status says a block ended.
	switch string(tag) {
	case "COMMIT":
		s.tokUp.mu.Lock()
		s.tokUp.endTransaction(true)
		s.tokUp.mu.Unlock()
	case "ROLLBACK":
		s.tokUp.rolledBack = true
	}
}

// endTransaction ends a local token, and settles a session token set in
// the transaction: kept on COMMIT, undone otherwise (as PostgreSQL undoes
// the setting). Called with mu held; ReadyForQuery 'I' after a COMMIT
// finds nothing left to settle.
func (u *tokenUpstream) endTransaction(committed bool) {
	if u.hasLocal || u.txSession {
		u.dirty.Store(true) // the upstream goroutine opens values of u.tenant() from the next message
	}
	u.hasLocal, u.local = false, ""
	if u.txSession {
		if !committed {
			// Guessed: a procedure may have committed the pin before
			// an error. The client goroutine asks PostgreSQL.
			u.session = u.prevSession
			u.uncertain = true
		}
		u.txSession = false
	}
}

// applyPin records a pin PostgreSQL confirmed.
func (s *session) applyPin(pin *tokenPin) {
	u := &s.tokUp
	u.mu.Lock()
	defer u.mu.Unlock()
	u.spent = max(u.spent, pin.n)
	switch {
	case pin.form == tokenReset:
		u.hasLocal, u.local = false, ""
		u.session = ""
	case pin.local:
		u.hasLocal, u.local = true, pin.tenant
	default:
		if !u.txSession {
			u.prevSession = u.session
		}
		u.txSession = true // settled by the transaction's end
		u.session = pin.tenant
		u.hasLocal, u.local = false, ""
	}
	s.results.setTenant(u.tenant())
}

// answerToken gives the client PostgreSQL's answer to its token statement.
func (s *session) answerToken(pin *tokenPin) error {
	switch pin.form {
	case tokenSetConfig:
		if err := s.sendClient(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{
			Name: []byte("set_config"), DataTypeOID: pgtype.TextOID, DataTypeSize: -1, TypeModifier: -1,
		}}}); err != nil {
			return err
		}
		if err := s.sendClient(&pgproto3.DataRow{Values: [][]byte{[]byte(pin.value)}}); err != nil {
			return err
		}
		return s.sendClient(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
	case tokenReset:
		return s.sendClient(&pgproto3.CommandComplete{CommandTag: []byte("RESET")})
	}
	return s.sendClient(&pgproto3.CommandComplete{CommandTag: []byte("SET")})
}

// clearAfterRefusal clears the upstream pin after a refused token, once
// PostgreSQL accepts statements again (not in a failed transaction block).
func (s *session) clearAfterRefusal() error {
	if !s.tok.clearOwed {
		return nil
	}
	_, code, err := s.callInternal(keystore.ClearStatement(s.tok.quotedAlias()), []byte(s.decl.tenancyCfg.Setting), []byte(keystore.ProofSetting))
	if err != nil {
		return err
	}
	s.tok.clearBlocked = code == pgerrcode.InFailedSQLTransaction
	if s.tok.clearBlocked {
		return nil
	}
	if code != "" {
		return fmt.Errorf("clearing the tenant after a refused token failed upstream with SQLSTATE %s", code)
	}
	s.tok.clearOwed = false
	s.tokUp.forget()
	return nil
}

// errQueryInRound ends a token session whose client sent a simple Query or
// a FunctionCall after Parse, Bind, Describe, Execute or Close messages
// without their Sync. PostgreSQL runs it, but the proxy's own statements
// between rounds (a pin burnt, cleared or made again) wait for the Sync,
// and it would run before them (found by review on 2026-12-08: a pin that
// did not complete was never burnt, and another client replayed it); and
// after an error in the round PostgreSQL skips it without an answer, which
// put the proxy's count of answers out of step for every later client of
// the connection (review 13). No driver sends one there; the session ends.
var errQueryInRound = &clientError{code: pgerrcode.ProtocolViolation, fatal: true,
	msg: "in a session whose tenant comes from tenant tokens, a simple query or a function call may not come between Parse, Bind, Describe, Execute or Close and their Sync"}

// errAbortedUntilCleared refuses what PostgreSQL would refuse in an
// aborted transaction (see refuseUntilCleared).
var errAbortedUntilCleared = &clientError{code: pgerrcode.InFailedSQLTransaction,
	msg: "current transaction is aborted, commands ignored until end of transaction block (a tenant token was refused in it: send ROLLBACK, or ROLLBACK TO SAVEPOINT, as a statement of its own)"}

// refuseUntilCleared keeps a token session whose pin is still owed a clear
// (or an unconfirmed pin a burn, see burnUnspent) in an aborted
// transaction to statements that end the abort, each alone: a query or a
// Parse must be one COMMIT, ROLLBACK [TO SAVEPOINT], ABORT, END or PREPARE
// TRANSACTION, a Bind must bind one, and an Execute must run a portal so
// bound in this round. PostgreSQL refuses everything else there itself,
// but not what follows a ROLLBACK TO SAVEPOINT in the same query or round:
// that would run under the tenant pinned before the refused token (its
// settings come back with the savepoint) while the proxy holds none (found
// by review on 2026-12-08). The proxy clears the pin before the next
// round.
func (s *session) refuseUntilCleared(msg pgproto3.FrontendMessage) (bool, error) {
	switch m := msg.(type) {
	case *pgproto3.Query:
		if !endsAbortAlone(m.String) {
			s.track(m)
			return true, s.refuse(errAbortedUntilCleared)
		}
	case *pgproto3.Parse:
		if !endsAbortAlone(m.Query) {
			return true, s.refuseExtended(errAbortedUntilCleared)
		}
	case *pgproto3.Bind:
		if text, ok := s.shapes.text(m.PreparedStatement, s.stmtGen[m.PreparedStatement]); !ok || !endsAbortAlone(text) {
			return true, s.refuseExtended(errAbortedUntilCleared)
		}
		if s.tok.exitPortals == nil {
			s.tok.exitPortals = make(map[string]int64)
		}
		s.tok.exitPortals[m.DestinationPortal] = s.upstreamOut.syncs
	case *pgproto3.Execute:
		// A portal bound before (in the aborted transaction's savepoint,
		// say) would run after a ROLLBACK TO in this round.
		if r, ok := s.tok.exitPortals[m.Portal]; !ok || r != s.upstreamOut.syncs {
			return true, s.refuseExtended(errAbortedUntilCleared)
		}
	case *pgproto3.FunctionCall:
		s.track(m)
		return true, s.refuse(errAbortedUntilCleared)
	}
	return false, nil
}

// endsAbortAlone reports whether text is one statement that ends an
// aborted transaction or rolls it back to a savepoint.
func endsAbortAlone(text string) bool {
	res, err := pg_query.Parse(text)
	if err != nil || len(res.Stmts) != 1 {
		return false
	}
	n, ok := res.Stmts[0].Stmt.Node.(*pg_query.Node_TransactionStmt)
	if !ok {
		return false
	}
	switch n.TransactionStmt.Kind {
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT, pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK,
		pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO, pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
		return true
	}
	return false
}

// forget leaves the upstream goroutine's view without a tenant (client
// goroutine, with every round answered).
func (u *tokenUpstream) forget() {
	u.mu.Lock()
	u.session, u.hasLocal, u.local, u.txSession = "", false, "", false
	u.dirty.Store(true)
	u.mu.Unlock()
}

// mayDropPin reports whether a token session's text may drop or change
// its pin: DISCARD, or RESET (ALL).
func mayDropPin(sql string) bool { return mentionsDiscard(sql) || containsFold(sql, "reset") }

// beforeTokenMessage runs in the client goroutine before each message of a
// token session but COPY data: it settles the tenant after a token, and
// does what the last round left owed (clearing the pin after a refused
// token; after DISCARD or RESET, a new challenge and PostgreSQL's tenant).
// It waits for the answers to every earlier round, so it never runs while
// PostgreSQL expects COPY data.
func (s *session) beforeTokenMessage() error {
	if err := s.settleTenant(); err != nil {
		return err
	}
	if s.tok.midRound {
		return nil // the proxy's own statements go between rounds only
	}
	if s.tok.clearOwed {
		if err := s.clearAfterRefusal(); err != nil {
			return err
		}
	}
	if err := s.burnUnspent(); err != nil {
		return err
	}
	if !s.repin.pending || s.srv.pinner == nil {
		return nil
	}
	r := &s.repin
	c, code, err := s.callInternal(keystore.ChallengeStatement)
	if err != nil {
		return err
	}
	if code == pgerrcode.InFailedSQLTransaction {
		return nil // again after the client's next round
	}
	if code != "" {
		return fmt.Errorf("drawing a pin challenge after DISCARD failed upstream with SQLSTATE %s", code)
	}
	if s.tok.challenge, err = strconv.ParseInt(string(c), 10, 64); err != nil {
		return fmt.Errorf("token session: pgcloak.pin_challenge() returned %q", c)
	}
	r.pending = false
	u := &s.tokUp
	u.mu.Lock()
	local := u.hasLocal
	u.mu.Unlock()
	if local {
		// A local token's transaction: whatever RESET or DISCARD left, the
		// session's or the login's tenant is not this transaction's, so
		// PostgreSQL gets none until it ends (pgcloak keeps the local
		// token: its rows disappear, which fails closed), and the session
		// token is pinned again after (settleTenant).
		_, code, err := s.callInternal(keystore.ClearStatement(s.tok.quotedAlias()), []byte(s.decl.tenancyCfg.Setting), []byte(keystore.ProofSetting))
		if err != nil {
			return err
		}
		if code == pgerrcode.InFailedSQLTransaction {
			r.pending = true // again after the client's next round
			return nil
		}
		if code != "" {
			return fmt.Errorf("clearing the tenant after RESET or DISCARD failed upstream with SQLSTATE %s", code)
		}
		s.tok.markerMoved = true
		return nil
	}
	setting, code, err := s.callInternal("SELECT pg_catalog.current_setting($1, true)", []byte(s.decl.tenancyCfg.Setting))
	if err != nil {
		return err
	}
	if code != "" {
		return fmt.Errorf("reading the tenant setting after DISCARD failed upstream with SQLSTATE %s", code)
	}
	switch {
	case len(setting) == 0:
		// RESET ALL or DISCARD ALL emptied the settings. Drop the pin too:
		// a ROLLBACK of a RESET ALL would restore settings that the marker
		// still matches.
		_, code, err := s.callInternal(keystore.ClearStatement(s.tok.quotedAlias()), []byte(s.decl.tenancyCfg.Setting), []byte(keystore.ProofSetting))
		if err != nil {
			return err
		}
		if code != "" {
			return fmt.Errorf("clearing the tenant after RESET ALL or DISCARD failed upstream with SQLSTATE %s", code)
		}
		s.tenant, s.tok.session, s.tok.proof = "", "", ""
		s.tokUp.forget()
		return nil
	case string(setting) == s.tok.session:
		return s.repinSession() // DISCARD SEQUENCES forgot the marker
	case s.tok.base != "" && string(setting) == s.tok.base:
		// DISCARD ALL or RESET ALL in a mode jwt session: back to the
		// login token's tenant, a startup parameter upstream.
		s.tok.session, s.tok.proof = s.tok.base, s.tok.baseProof
		u := &s.tokUp
		u.mu.Lock()
		u.session, u.hasLocal, u.local, u.txSession = s.tok.base, false, "", false
		u.dirty.Store(true)
		u.mu.Unlock()
		return s.repinSession()
	}
	return nil
}

// noTokens is the verifier of a server configured without one: it refuses
// every token.
type noTokens struct{}

func (noTokens) VerifyToken(context.Context, string) (TokenClaims, error) {
	return TokenClaims{}, errors.New("tenant token refused: no verification key is configured")
}

// rewriteStatements rewrites a run of statements of a token session's
// simple Query (between its token statements) for the tenant the session
// has at that point.
func (s *session) rewriteStatements(sql string) (string, error) {
	sql, err := s.catalogView(sql)
	if err != nil {
		return "", err
	}
	if !s.needsAnalysis(sql) {
		return sql, nil
	}
	// As handleQuery does: one analysis per literal-normalised shape, so
	// a transaction's statements that differ in their constants only (a
	// read by id) are not parsed again in every transaction.
	sp, lits, known := s.cachedShape(sql)
	if !known {
		return "", errLoopWouldWait
	}
	if sp != nil && s.checkPlan(sp.Plan) == nil {
		s.shapes.named(sp.Plan.Prepared)
		if sp.Plan.Passthrough {
			return sql, nil
		}
		text, err := s.renderShape(sp, lits)
		if err != nil {
			return "", err
		}
		s.srv.audit.obs.StatementRewritten()
		return text, nil
	}
	plan, err, known := s.cachedPlan(sql)
	if !known {
		return "", errLoopWouldWait
	}
	if err == nil {
		err = s.checkPlan(plan)
	}
	if err != nil {
		return "", err
	}
	if plan.Copy != nil {
		return "", &clientError{code: pgerrcode.FeatureNotSupported, msg: "COPY cannot share a query with a tenant token; send it as a query of its own"}
	}
	s.shapes.named(plan.Prepared)
	if plan.Passthrough || unchanged(plan, sql) {
		return sql, nil
	}
	text, err := s.render(plan)
	if err == nil {
		s.srv.audit.obs.StatementRewritten()
	}
	return text, err
}

// answer counts a ReadyForQuery of the proxy's own statements.
func (u *tokenUpstream) answer() {
	u.mu.Lock()
	u.answered++
	u.cond.Broadcast()
	u.mu.Unlock()
}

// parseToken prepares a token statement sent through the extended
// protocol: PostgreSQL gets the proxy's pin statement (keystore's, with
// parameters the proxy fills at each Bind) under a name of the proxy's
// own, never the token.
func (s *session) parseToken(m *pgproto3.Parse) error {
	if strings.HasPrefix(m.Name, reservedPrefix) {
		return s.refuseExtended(errReservedName)
	}
	if !s.tracks {
		return s.refuseExtended(&clientError{code: pgerrcode.FeatureNotSupported,
			msg: "without declared tables, send a tenant token as a simple query"})
	}
	pieces, err := tokenQuery(m.Query)
	if err != nil {
		return s.refuseExtended(err)
	}
	if len(pieces) != 1 || pieces[0].token == nil {
		return s.refuseExtended(&clientError{code: pgerrcode.SyntaxError, msg: "cannot insert multiple commands into a prepared statement"})
	}
	ts := pieces[0].token
	if m.Name != "" {
		if old := s.statements[m.Name]; old != nil && !old.failed.Load() {
			return s.refuseExtended(&clientError{code: pgerrcode.DuplicatePreparedStatement, msg: fmt.Sprintf("prepared statement %q already exists", m.Name)})
		}
	}
	s.fixName(m.Name, m.Query)
	ps := &preparedStatement{token: ts, clientOIDs: append([]uint32(nil), m.ParameterOIDs...), nparams: max(len(m.ParameterOIDs), ts.param)}
	if m.Name != "" {
		s.stmtSeq++
		ps.upstream = reservedPrefix + "s" + strconv.FormatUint(s.stmtSeq, 10)
	} else {
		// Never upstream's "": a pin statement that PostgreSQL still held
		// after the proxy forgot it (a Close skipped after an error)
		// would take a client's Bind of "" with values of its choosing.
		ps.upstream = unnamedUpstream
		s.pending.push(&pending{kind: pendClose, name: ps.upstream, target: 'S', own: true})
		s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S', Name: ps.upstream})
	}
	s.statements[m.Name] = ps
	s.newGeneration(m.Name)
	s.shapes.parsed(m.Name, s.stmtGen[m.Name], m.Query)
	s.pending.push(&pending{kind: pendParse, name: m.Name, prepared: ps})
	s.tok.justParsed, ps.pinRound = ps, s.upstreamOut.syncs
	return s.upstreamOut.send(&pgproto3.Parse{Name: ps.upstream, Query: s.pinText(ts)})
}

// pinText is the proxy's pin statement that stands for the token statement
// ts upstream.
func (s *session) pinText(ts *tokenStmt) string {
	if ts.form == tokenReset {
		return keystore.ClearStatement(s.tok.quotedAlias())
	}
	return keystore.NextStatement(ts.local, s.tok.quotedAlias())
}

// reprepareToken prepares ps's pin statement upstream again, in the same
// batch as the Bind that follows. SQL the proxy cannot read (a DBA's
// function that runs any text it is given) may have deallocated the
// proxy's statement of that name and prepared another in its place, whose
// answer, made of the values bound, would pass for the pin's: the proxy
// would then hold the token's tenant while PostgreSQL kept another pinned
// (found by review on 2026-12-08).
func (s *session) reprepareToken(ps *preparedStatement) {
	s.pending.push(&pending{kind: pendClose, name: ps.upstream, target: 'S', own: true})
	s.upstreamOut.send(&pgproto3.Close{ObjectType: 'S', Name: ps.upstream})
	s.pending.push(&pending{kind: pendParse, name: ps.upstream, own: true})
	s.upstreamOut.send(&pgproto3.Parse{Name: ps.upstream, Query: s.pinText(ps.token)})
}

// bindToken verifies the token a Bind of a token statement presents (the
// statement's literal, or set_config's bound value) and binds the proxy's
// pin in its place.
func (s *session) bindToken(m *pgproto3.Bind, ps *preparedStatement) error {
	if m.DestinationPortal != "" {
		return s.refuseExtended(&clientError{code: pgerrcode.FeatureNotSupported,
			msg: "bind a tenant token statement to the unnamed portal"})
	}
	if len(m.Parameters) != ps.nparams {
		return s.refuseExtended(&clientError{code: pgerrcode.ProtocolViolation,
			msg: fmt.Sprintf("bind message supplies %d parameters, but prepared statement %q requires %d", len(m.Parameters), m.PreparedStatement, ps.nparams)})
	}
	if err := s.switchAllowed(); err != nil {
		if err == errLoopWouldWait || err == errDone {
			return err
		}
		return s.refuseExtended(err)
	}
	ts := ps.token
	raw := ts.token
	if ts.param != 0 {
		v := m.Parameters[ts.param-1]
		if v == nil {
			id := s.auditIdentity()
			s.auditEvent(func() { s.srv.audit.l.TenantTokenRefused(id, "malformed") })
			return s.refuseExtended(&clientError{code: pgerrcode.InvalidAuthorizationSpecification, msg: "tenant token refused: malformed"})
		}
		raw = string(v) // text, in either format
	}
	var args [][]byte
	pin, _, err := s.tokenPin(ts, raw, &args)
	if err == errLoopWouldWait {
		// On the relay loop, a token it cannot verify at once: nothing
		// changed yet but handleBind's bindDeallocation, which the
		// goroutines record again as it was.
		return err
	}
	if err != nil {
		return s.refuseExtended(err)
	}
	s.tok.awaitExec = pin
	if s.tok.afterParse != ps || ps.pinRound != s.upstreamOut.syncs {
		// Not the message right after the statement's own Parse.
		s.reprepareToken(ps)
	}
	s.pending.push(&pending{kind: pendBind, name: m.DestinationPortal, stmt: m.PreparedStatement,
		resultFormats: append([]int16(nil), m.ResultFormatCodes...), token: pin})
	return s.upstreamOut.send(&pgproto3.Bind{DestinationPortal: m.DestinationPortal, PreparedStatement: ps.upstream,
		Parameters: args, ResultFormatCodes: m.ResultFormatCodes})
}

// trimRefusal is the reason a token verifier gave, without its prefix.
func trimRefusal(err error) string {
	return strings.TrimPrefix(err.Error(), "tenant token refused: ")
}

// idle reports whether every round sent upstream has been answered and the
// session is outside a transaction block (client goroutine).
func (s *session) idle() bool {
	u := &s.tokUp
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.answered == s.upstreamOut.syncs && (u.status == 'I' || u.status == 0)
}

// isCopyData reports whether msg is part of a COPY FROM STDIN's data.
func isCopyData(msg pgproto3.FrontendMessage) bool {
	switch msg.(type) {
	case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
		return true
	}
	return false
}

// checkTokenPortal runs in the client goroutine before each message of a
// token session while a token statement's portal is bound: a Describe of
// it may come, then its Execute (all rows at once), which handleExecute
// turns into the pin. Any other message first closes the portal (an
// Execute of it later finds no portal), so that a pin PostgreSQL runs is
// always one the proxy follows. It reports whether msg was taken.
func (s *session) checkTokenPortal(msg pgproto3.FrontendMessage) (bool, error) {
	pin := s.tok.awaitExec
	switch m := msg.(type) {
	case *pgproto3.Describe:
		if m.ObjectType == 'P' && m.Name == "" {
			s.pending.push(&pending{kind: pendDescribe, name: "", target: 'P', token: pin})
			return true, s.upstreamOut.send(m)
		}
	case *pgproto3.Execute:
		if m.Portal == "" && m.MaxRows == 0 {
			s.tok.awaitExec = nil
			s.applyClientPin(pin) // what follows the Execute runs after the pin
			s.pending.push(&pending{kind: pendExecute, name: "", token: pin})
			s.upstreamOut.send(m)
			s.pending.push(&pending{kind: pendClose, name: "", target: 'P', own: true})
			return true, s.upstreamOut.send(&pgproto3.Close{ObjectType: 'P'})
		}
	}
	s.tok.awaitExec = nil
	s.pending.push(&pending{kind: pendClose, name: "", target: 'P', own: true})
	return false, s.upstreamOut.send(&pgproto3.Close{ObjectType: 'P'})
}
