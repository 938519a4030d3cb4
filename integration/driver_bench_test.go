package integration

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"
)

// BenchmarkDriver compares the dbproxy driver with pgx's stdlib connected
// straight to one node (a single shard without standbys, so both sides
// talk to the same PostgreSQL): a point read and a point write.
//
//	go test ./integration/ -run XXX -bench Driver -benchmem
func BenchmarkDriver(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	clusters := startDriverClusters(b, ctx, "drvbench", 1, 0)
	env := openDriverEnv(b, clusters, driverConfig(b, clusters, "bench(id:int)", nil))
	direct := directDB(b, clusters[0].Primary())
	if _, err := direct.ExecContext(ctx, `CREATE TABLE bench (id int PRIMARY KEY, v text NOT NULL, n bigint NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		if _, err := direct.ExecContext(ctx, `INSERT INTO bench (id, v, n) VALUES ($1, $2, 0)`, i, fmt.Sprintf("value-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	read := func(b *testing.B, db *sql.DB) {
		b.ReportAllocs()
		var v string
		i := 0
		for b.Loop() {
			if err := db.QueryRowContext(ctx, `SELECT v FROM bench WHERE id = $1`, i%1000).Scan(&v); err != nil {
				b.Fatal(err)
			}
			i++
		}
	}
	write := func(b *testing.B, db *sql.DB) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := db.ExecContext(ctx, `UPDATE bench SET n = n + 1 WHERE id = $1`, i%1000); err != nil {
				b.Fatal(err)
			}
			i++
		}
	}
	b.Run("PointRead/pgx-stdlib", func(b *testing.B) { read(b, direct) })
	b.Run("PointRead/dbproxy", func(b *testing.B) { read(b, env.db) })
	b.Run("PointWrite/pgx-stdlib", func(b *testing.B) { write(b, direct) })
	b.Run("PointWrite/dbproxy", func(b *testing.B) { write(b, env.db) })
}
