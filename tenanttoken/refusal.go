package tenanttoken

// Refusal is why a token was not accepted. It says nothing about the token
// itself: proxy sends it to the client as SQLSTATE 28000 with the message
// "pgcloak: " + Error(), and audits its Reason.
type Refusal struct {
	Reason string // one of Reasons
}

// Error returns "tenant token refused: " and the reason.
func (r *Refusal) Error() string { return "tenant token refused: " + r.Reason }

// Refusal reasons. The strings are part of the wire and audit contract
// (SPEC §5.2); do not reword them.
const (
	ReasonExpired        = "expired"
	ReasonNotYetValid    = "not yet valid"
	ReasonBadSignature   = "bad signature"
	ReasonWrongIssuer    = "wrong issuer"
	ReasonWrongAudience  = "wrong audience"
	ReasonNoTenant       = "no tenant claim"
	ReasonUnknownKID     = "unknown kid"
	ReasonMalformed      = "malformed"
	ReasonAlgorithm      = "algorithm not allowed"
	ReasonNoExpiry       = "no expiry"
	ReasonLifetime       = "lifetime too long"
	ReasonIssuedInFuture = "issued in the future"
)

// Reasons lists every Reason a Refusal may carry.
var Reasons = []string{
	ReasonExpired, ReasonNotYetValid, ReasonBadSignature, ReasonWrongIssuer,
	ReasonWrongAudience, ReasonNoTenant, ReasonUnknownKID, ReasonMalformed,
	ReasonAlgorithm, ReasonNoExpiry, ReasonLifetime, ReasonIssuedInFuture,
}

func refuse(reason string) *Refusal { return &Refusal{Reason: reason} }
