// Command pinsql prints the statement pgcloak sends upstream to pin a
// transaction-local tenant token (keystore.NextStatement), with its
// parameters $1..$7 as they are, for bench/pincost.sh. It is a tool for the
// benchmark, not part of pgcloak.
package main

import (
	"fmt"

	"github.com/pgcloak/pgcloak/keystore"
)

func main() { fmt.Println(keystore.NextStatement(true, `"pin"`)) }
