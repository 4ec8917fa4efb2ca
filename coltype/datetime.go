package coltype

import (
	"math"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // IANA zone names resolve even where the host has no zoneinfo

	"github.com/jackc/pgerrcode"
)

// PostgreSQL's date/time ranges (src/include/datatype/timestamp.h), in
// astronomical years (1 BC is year 0): both types start at 4714-11-24 BC;
// date ends with 5874897 AD, timestamp with 294276 AD.
var (
	minDateTime  = time.Date(-4713, 11, 24, 0, 0, 0, 0, time.UTC)
	endDate      = time.Date(5874898, 1, 1, 0, 0, 0, 0, time.UTC)
	endTimestamp = time.Date(294277, 1, 1, 0, 0, 0, 0, time.UTC)
)

// maxTZDispHour is MAX_TZDISP_HOUR: offsets run to ±15:59:59.
const maxTZDispHour = 15

// dateTime is a parsed date/time input. year is astronomical once era has
// been applied.
type dateTime struct {
	special string // "infinity", "-infinity" or "" for a date

	year, month, day int
	hasTime          bool
	hour, min, sec   int
	usec             int // rounded; 1000000 carries into the next second
	zone             *time.Location
}

var (
	errFieldOverflow = newError(pgerrcode.DatetimeFieldOverflow, "date/time field value out of range")
	errTZDisp        = newError(pgerrcode.InvalidTimeZoneDisplacementValue, "time zone displacement out of range")
	errTZName        = newError(pgerrcode.InvalidParameterValue, "time zone not recognized")
	errSpecial       = newError(pgerrcode.FeatureNotSupported, "pgcloak does not accept the special date/time values now, today, tomorrow, yesterday and allballs for encrypted columns")
)

// parseDateTime parses the input grammar pgcloak accepts for date,
// timestamp and timestamptz: a subset of PostgreSQL's, namely
//
//	infinity | -infinity | epoch                      (any case)
//	date [ ("T" | spaces) time ] [ [spaces] zone ] [ [spaces] ("BC" | "AD") ]
//	date = YYY[Y...]-M[M]-D[D] | YYYYMMDD
//	time = H[H]:M[M][:S[S][.fraction]]
//	zone = Z | UTC | GMT | UT | ±H[H][[:]MM[[:]SS]] | an IANA name (Europe/Berlin)
//
// with surrounding spaces. Fractions are rounded to microseconds as
// PostgreSQL rounds them (rint of the fraction times 10^6). Other inputs
// PostgreSQL takes - month names, two-digit years, Julian days, ISO week
// dates, zone abbreviations such as PST - are refused as invalid syntax;
// the values PostgreSQL computes from time (now, today...) are refused as
// not supported.
func parseDateTime(s, pgName string) (dateTime, error) {
	var dt dateTime
	bad := newError(pgerrcode.InvalidDatetimeFormat, "invalid input syntax for type "+pgName)
	s = trimSpace(s)
	switch strings.ToLower(s) {
	case "infinity":
		dt.special = "infinity"
		return dt, nil
	case "-infinity":
		dt.special = "-infinity"
		return dt, nil
	case "epoch":
		dt.year, dt.month, dt.day = 1970, 1, 1
		return dt, nil
	case "now", "today", "tomorrow", "yesterday", "allballs":
		return dt, errSpecial
	}

	p := &scanner{s: s}
	y, ny := p.digits()
	switch {
	case ny == 8 && !p.peek('-'):
		dt.year, dt.month, dt.day = y/10000, y/100%100, y%100
	case ny >= 3 && p.eat('-'):
		if ny > 9 {
			return dt, newError(pgerrcode.DatetimeFieldOverflow, "date out of range")
		}
		dt.year = y
		var nm, nd int
		dt.month, nm = p.digits()
		if nm < 1 || nm > 2 || !p.eat('-') {
			return dt, bad
		}
		dt.day, nd = p.digits()
		if nd < 1 || nd > 2 {
			return dt, bad
		}
	default:
		return dt, bad
	}

	// Time of day, after "T" or spaces.
	if p.peek('T') || p.peek('t') || p.peekSpace() {
		save := p.i
		if !p.eat('T') && !p.eat('t') {
			p.spaces()
		}
		if p.peekDigit() {
			if err := p.clock(&dt, bad); err != nil {
				return dt, err
			}
		} else {
			p.i = save
		}
	}

	// Zone and era, in that order, each optional.
	bc, haveEra := false, false
	for {
		before := p.i
		p.spaces()
		if p.done() {
			break
		}
		if haveEra {
			return dt, bad
		}
		switch c := p.s[p.i]; {
		case c == '+' || c == '-':
			// "2024-06-01-0800" is a malformed date to PostgreSQL, not a zone.
			if dt.zone != nil || c == '-' && !dt.hasTime && p.i == before {
				return dt, bad
			}
			zone, err := p.offset(bad)
			if err != nil {
				return dt, err
			}
			dt.zone = zone
		case isLetter(c):
			word := p.word()
			switch strings.ToLower(word) {
			case "bc":
				bc, haveEra = true, true
				continue
			case "ad":
				haveEra = true
				continue
			}
			if dt.zone != nil {
				return dt, bad
			}
			zone, err := zoneByName(word)
			if err != nil {
				return dt, err
			}
			dt.zone = zone
		default:
			return dt, bad
		}
	}

	if dt.year < 1 || dt.month < 1 || dt.month > 12 || dt.day < 1 {
		return dt, errFieldOverflow
	}
	if bc {
		dt.year = 1 - dt.year
	}
	if dt.day > daysIn(dt.year, dt.month) {
		return dt, errFieldOverflow
	}
	if dt.hour > 24 || dt.min > 59 || dt.sec > 60 ||
		dt.hour == 24 && (dt.min != 0 || dt.sec != 0 || dt.usec != 0) {
		return dt, errFieldOverflow
	}
	return dt, nil
}

// clock parses H[H]:M[M][:S[S][.fraction]].
func (p *scanner) clock(dt *dateTime, bad *Error) error {
	var n int
	dt.hasTime = true
	if dt.hour, n = p.digits(); n < 1 || n > 2 || !p.eat(':') {
		return bad
	}
	if dt.min, n = p.digits(); n < 1 || n > 2 {
		return bad
	}
	if !p.eat(':') {
		return nil
	}
	if dt.sec, n = p.digits(); n < 1 || n > 2 {
		return bad
	}
	if !p.eat('.') {
		return nil
	}
	start := p.i
	for p.peekDigit() {
		p.i++
	}
	if p.i > start {
		// ParseFractionalSecond: rint(strtod(".ddd") * 1000000).
		frac, err := strconv.ParseFloat("0."+p.s[start:p.i], 64)
		if err != nil {
			return bad
		}
		dt.usec = int(math.RoundToEven(frac * 1e6))
	}
	return nil
}

// offset parses ±H[H][[:]MM[[:]SS]] as DecodeTimezone does.
func (p *scanner) offset(bad *Error) (*time.Location, error) {
	neg := p.s[p.i] == '-'
	p.i++
	v, n := p.digits()
	var h, m, s int
	switch {
	case n < 1 || n > 6:
		return nil, bad
	case p.eat(':'):
		if n > 2 {
			return nil, bad
		}
		h = v
		var nm int
		if m, nm = p.digits(); nm < 1 || nm > 2 {
			return nil, bad
		}
		if p.eat(':') {
			var ns int
			if s, ns = p.digits(); ns < 1 || ns > 2 {
				return nil, bad
			}
		}
	case n <= 2:
		h = v
	case n <= 4:
		h, m = v/100, v%100
	default:
		h, m, s = v/10000, v/100%100, v%100
	}
	if h > maxTZDispHour || m > 59 || s > 59 {
		return nil, errTZDisp
	}
	off := h*3600 + m*60 + s
	if neg {
		off = -off
	}
	return time.FixedZone("", off), nil
}

// zoneByName resolves the zone names pgcloak accepts.
func zoneByName(name string) (*time.Location, error) {
	switch strings.ToLower(name) {
	case "z", "zulu", "utc", "gmt", "ut":
		return time.UTC, nil
	}
	if !strings.Contains(name, "/") {
		return nil, errTZName // abbreviations (PST) and "Local" are not accepted
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, errTZName
	}
	return loc, nil
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// wallClock is the parsed fields as a time in loc.
func (dt dateTime) wallClock(loc *time.Location) time.Time {
	return time.Date(dt.year, time.Month(dt.month), dt.day, dt.hour, dt.min, dt.sec, dt.usec*1000, loc)
}

// canonDate: the time and zone of the input, if any, are validated and
// ignored, as date_in does.
func canonDate(s string, _ *time.Location) (string, error) {
	dt, err := parseDateTime(s, "date")
	if err != nil {
		return "", err
	}
	if dt.special != "" {
		return dt.special, nil
	}
	t := time.Date(dt.year, time.Month(dt.month), dt.day, 0, 0, 0, 0, time.UTC)
	if t.Before(minDateTime) || !t.Before(endDate) {
		return "", newError(pgerrcode.DatetimeFieldOverflow, "date out of range")
	}
	return string(appendDate(nil, t)), nil
}

// canonTimestamp: a zone in the input is validated and ignored, as
// timestamp_in does.
func canonTimestamp(s string, _ *time.Location) (string, error) {
	dt, err := parseDateTime(s, "timestamp")
	if err != nil {
		return "", err
	}
	if dt.special != "" {
		return dt.special, nil
	}
	t := dt.wallClock(time.UTC)
	if t.Before(minDateTime) || !t.Before(endTimestamp) {
		return "", newError(pgerrcode.DatetimeFieldOverflow, "timestamp out of range")
	}
	return string(appendTimestamp(nil, t, false)), nil
}

// canonTimestamptz converts to UTC; zone is the session's TimeZone, used
// when the input names none.
func canonTimestamptz(s string, zone *time.Location) (string, error) {
	dt, err := parseDateTime(s, "timestamp with time zone")
	if err != nil {
		return "", err
	}
	if dt.special != "" {
		return dt.special, nil
	}
	if dt.zone != nil {
		zone = dt.zone
	}
	t := dt.wallClock(zone).UTC()
	if t.Before(minDateTime) || !t.Before(endTimestamp) {
		return "", newError(pgerrcode.DatetimeFieldOverflow, "timestamp out of range")
	}
	return string(appendTimestamp(nil, t, true)), nil
}

// appendDate appends t's date as PostgreSQL prints it with DateStyle ISO:
// at least four year digits, and " BC" for years before 1.
func appendDate(b []byte, t time.Time) []byte {
	y, m, d := t.Date()
	bc := y <= 0
	if bc {
		y = 1 - y
	}
	b = appendPadded(b, y, 4)
	b = append(b, '-')
	b = appendPadded(b, int(m), 2)
	b = append(b, '-')
	b = appendPadded(b, d, 2)
	if bc {
		b = append(b, " BC"...)
	}
	return b
}

// appendTimestamp appends a UTC t as timestamp (or, with utc, timestamptz
// under TimeZone UTC) prints: fractional seconds without trailing zeros,
// "+00" for timestamptz, " BC" last.
func appendTimestamp(b []byte, t time.Time, utc bool) []byte {
	b = appendDate(b, t)
	bc := len(b) > 3 && string(b[len(b)-3:]) == " BC"
	if bc {
		b = b[:len(b)-3]
	}
	b = t.AppendFormat(b, " 15:04:05.999999")
	if utc {
		b = append(b, "+00"...)
	}
	if bc {
		b = append(b, " BC"...)
	}
	return b
}

func appendPadded(b []byte, v, width int) []byte {
	s := strconv.Itoa(v)
	for range width - len(s) {
		b = append(b, '0')
	}
	return append(b, s...)
}

// scanner walks an input string.
type scanner struct {
	s string
	i int
}

func (p *scanner) done() bool       { return p.i >= len(p.s) }
func (p *scanner) peek(c byte) bool { return p.i < len(p.s) && p.s[p.i] == c }
func (p *scanner) peekDigit() bool  { return p.i < len(p.s) && isDigit(p.s[p.i]) }
func (p *scanner) peekSpace() bool  { return p.i < len(p.s) && isSpace(p.s[p.i]) }
func (p *scanner) eat(c byte) bool {
	if p.peek(c) {
		p.i++
		return true
	}
	return false
}

func (p *scanner) spaces() {
	for p.peekSpace() {
		p.i++
	}
}

// digits reads a run of decimal digits: its value (saturated) and length.
func (p *scanner) digits() (v, n int) {
	for p.peekDigit() {
		if v < math.MaxInt32 {
			v = v*10 + int(p.s[p.i]-'0')
		}
		p.i++
		n++
	}
	return v, n
}

// word reads a zone name or era: letters, digits and _ / + -.
func (p *scanner) word() string {
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if !isLetter(c) && !isDigit(c) && c != '_' && c != '/' && c != '+' && c != '-' {
			break
		}
		p.i++
	}
	return p.s[start:p.i]
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
