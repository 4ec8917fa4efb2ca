package tenanttoken

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/pgcloak/pgcloak/config"
	"golang.org/x/time/rate"
)

const (
	// DefaultJWKSRefresh is how often the key set is fetched in the
	// background, so that a key the issuer withdrew stops verifying.
	DefaultJWKSRefresh = 5 * time.Minute

	// JWKSRefetchInterval is the least time between two fetches caused by
	// tokens naming a kid the set lacks (SPEC §5.2).
	JWKSRefetchInterval = 10 * time.Second

	// jwksTimeout bounds one fetch of the key set.
	jwksTimeout = 10 * time.Second

	// maxJWKSBody bounds the size of a key set response.
	maxJWKSBody = 1 << 20

	// maxJWKSRedirects bounds the redirects one fetch follows.
	maxJWKSRedirects = 3
)

// jwks is a key set fetched from tenancy.jwt.jwks_url.
type jwks struct {
	keyfunc   keyfunc.Keyfunc
	transport *http.Transport
	stop      context.CancelFunc // ends the background refresh
}

// startJWKS fetches the key set at rawURL, failing when it cannot be
// fetched or holds no usable key, and starts its background refresh. ctx
// bounds the first fetch only; close stops the refresh.
func startJWKS(ctx context.Context, rawURL string, o *options, allowRefetch func() bool) (*jwks, error) {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	client := &http.Client{
		Timeout:       jwksTimeout,
		Transport:     limitedBody{transport},
		CheckRedirect: checkJWKSRedirect,
	}
	onError := func(_ context.Context, err error) {
		if o.refreshError != nil {
			o.refreshError(fmt.Errorf("tenancy.jwt.jwks_url: %w", err))
		}
	}

	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	// Until the first fetch is done, the caller's ctx may end it.
	detach := context.AfterFunc(ctx, stop)
	remote, err := jwkset.NewStorageFromHTTP(rawURL, jwkset.HTTPClientStorageOptions{
		Client:              client,
		Ctx:                 bg,
		HTTPTimeout:         jwksTimeout,
		RefreshErrorHandler: onError,
		RefreshInterval:     o.jwksRefresh,
	})
	if !detach() {
		err = errors.Join(ctx.Err(), err)
	}
	if err == nil {
		var keys []jwkset.JWK
		if keys, err = remote.KeyReadAll(bg); err == nil && len(keys) == 0 {
			err = errors.New("the key set holds no key pgcloak can use (RSA, EC P-256/P-384, Ed25519)")
		}
	}
	if err != nil {
		stop()
		transport.CloseIdleConnections()
		return nil, fmt.Errorf("tenancy.jwt.jwks_url %s: %w", rawURL, err)
	}

	// The refresher fetches the set again whenever it is asked for a kid
	// the set lacks; store asks it only when allowRefetch says so, which
	// keeps the rate without making a session wait for the limiter.
	refresher, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs:          map[string]jwkset.Storage{rawURL: remote},
		RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1),
	})
	if err == nil {
		var kf keyfunc.Keyfunc
		kf, err = keyfunc.New(keyfunc.Options{
			Ctx:          bg,
			Storage:      &refetchingStorage{Storage: remote, refresher: refresher, allow: allowRefetch},
			UseWhitelist: []jwkset.USE{jwkset.UseSig, ""},
		})
		if err == nil {
			return &jwks{keyfunc: kf, transport: transport, stop: stop}, nil
		}
	}
	stop()
	transport.CloseIdleConnections()
	return nil, fmt.Errorf("tenancy.jwt.jwks_url %s: %w", rawURL, err)
}

// close stops the background refresh and drops idle connections.
func (j *jwks) close() {
	j.stop()
	j.transport.CloseIdleConnections()
}

// refetchingStorage reads keys from the fetched set and, for a kid the set
// lacks, fetches the set again when allow reports that the rate permits.
type refetchingStorage struct {
	jwkset.Storage
	refresher jwkset.Storage
	allow     func() bool
}

func (s *refetchingStorage) KeyRead(ctx context.Context, kid string) (jwkset.JWK, error) {
	key, err := s.Storage.KeyRead(ctx, kid)
	if !errors.Is(err, jwkset.ErrKeyNotFound) || !s.allow() {
		return key, err
	}
	ctx, cancel := context.WithTimeout(ctx, jwksTimeout)
	defer cancel()
	return s.refresher.KeyRead(ctx, kid)
}

// checkJWKSRedirect follows a few redirects, none of them to plain http
// off the machine: the key set decides which tokens verify.
func checkJWKSRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxJWKSRedirects {
		return fmt.Errorf("more than %d redirects", maxJWKSRedirects)
	}
	if !secureJWKSURL(req.URL) {
		return fmt.Errorf("redirected to %s, which is neither https nor loopback", req.URL.Redacted())
	}
	return nil
}

func secureJWKSURL(u *url.URL) bool {
	return u.Scheme == "https" || u.Scheme == "http" && config.IsLoopbackHost(u.Hostname())
}

// limitedBody cuts every response body at maxJWKSBody bytes, so a key set
// endpoint cannot make us buffer without end; a cut set fails to decode.
type limitedBody struct{ base http.RoundTripper }

func (l limitedBody) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, maxJWKSBody), resp.Body}
	return resp, nil
}
