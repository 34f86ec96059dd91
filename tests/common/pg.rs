//! The machine's PostgreSQL (127.0.0.1:5432, user `postgres`, as `scripts/test` sets it up).

/// Runs SQL on the test database and returns each row's columns as text.
pub fn pg(sql: &str) -> Vec<Vec<Option<String>>> {
    let rt = tokio::runtime::Runtime::new().expect("test runtime");
    rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", tokio_postgres::NoTls)
                .await
                .expect("the tests need PostgreSQL on 127.0.0.1:5432 (scripts/test starts it)");
        tokio::spawn(conn);
        let mut out = Vec::new();
        for m in client.simple_query(sql).await.unwrap_or_else(|e| panic!("running {sql}: {e}")) {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                out.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
            }
        }
        out
    })
}

/// A table name no other run uses.
pub fn table(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// Drops a CDC test's slot, publication and tables when it ends, passed or not: a forgotten
/// slot holds back the server's WAL and takes one of its few slots.
pub struct Cleanup {
    /// Replication slots.
    pub slots: Vec<String>,
    /// Publications.
    pub publications: Vec<String>,
    /// Tables.
    pub tables: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for s in &self.slots {
            pg(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{s}' AND NOT active"
            ));
        }
        for p in &self.publications {
            pg(&format!("DROP PUBLICATION IF EXISTS \"{p}\""));
        }
        for t in &self.tables {
            pg(&format!("DROP TABLE IF EXISTS {t}"));
        }
    }
}
