//! Encryption at rest: a [`Store`] wrapper that encrypts the values of chosen key prefixes
//! (Secrets by default) with AES-256-GCM before they reach the backend, in objects and in the
//! change log alike, and decrypts them on the way out.
//!
//! A value is stored as upstream's `aesgcm` provider writes it:
//! `k8s:enc:aesgcm:v1:<key name>:` + 12-byte random nonce + ciphertext and tag, with the
//! storage key as additional authenticated data (a ciphertext moved to another key does not
//! decrypt). The [`Keyring`]'s first key encrypts; every key decrypts (rotation: add a new
//! key first, restart, let [`Encrypted::rewrite_stale`] re-encrypt, then drop the old key).
//! With `identity` allowed, plaintext values written before encryption was on still read.

use crate::{BoxFuture, Change, CommitResult, Error, KeyValue, Lease, Op, RangeResult, Result, Store, Txn};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::Arc;

const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";

/// One named AES-256 key.
pub struct Key {
    name: String,
    key: LessSafeKey,
}

impl Key {
    /// A key from its name and 32 bytes.
    pub fn new(name: &str, secret: &[u8]) -> std::result::Result<Key, String> {
        if name.is_empty() || name.contains(':') {
            return Err(format!("invalid key name {name:?}: it must be non-empty and have no ':'"));
        }
        if secret.len() != 32 {
            return Err(format!("key {name:?} must be 32 bytes (AES-256), not {}", secret.len()));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, secret)
            .map_err(|_| format!("key {name:?} is not a valid AES key"))?;
        Ok(Key { name: name.to_string(), key: LessSafeKey::new(unbound) })
    }
}

/// The keys of an encryption configuration.
pub struct Keyring {
    keys: Vec<Key>,
    identity: bool,
    encrypt: bool,
}

impl Keyring {
    /// `keys` (the first encrypts; all decrypt); with `identity`, unencrypted values read
    /// as they are. At least one key is needed.
    pub fn new(keys: Vec<Key>, identity: bool) -> std::result::Result<Keyring, String> {
        if keys.is_empty() {
            return Err("an encryption configuration needs at least one key".into());
        }
        Ok(Keyring { keys, identity, encrypt: true })
    }

    /// With `false`, new values are written in plaintext (upstream's `identity` provider
    /// listed first: decrypting everything back, e.g. before dropping encryption); the keys
    /// still decrypt what is stored.
    pub fn encrypting(mut self, encrypt: bool) -> Keyring {
        self.encrypt = encrypt;
        self.identity |= !encrypt;
        self
    }

    fn encrypt(&self, rng: &SystemRandom, key: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        if !self.encrypt {
            return Ok(plain.to_vec());
        }
        let k = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| Error::Backend("no randomness for an encryption nonce".into()))?;
        let mut data = plain.to_vec();
        k.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key), &mut data)
            .map_err(|_| Error::Backend("failed to encrypt a value".into()))?;
        let mut out = Vec::with_capacity(PREFIX.len() + k.name.len() + 1 + NONCE_LEN + data.len());
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(k.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// The plaintext of a stored value, and whether it was written with another key than
    /// the first (or not encrypted): such a value is stale and should be rewritten.
    fn decrypt(&self, key: &[u8], stored: &[u8]) -> Result<(Vec<u8>, bool)> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            if self.identity {
                return Ok((stored.to_vec(), self.encrypt));
            }
            return Err(Error::Backend(format!(
                "value of {} is not encrypted and the configuration does not allow identity",
                String::from_utf8_lossy(key)
            )));
        };
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| Error::Backend("malformed encrypted value".into()))?;
        let (name, body) = (&rest[..colon], &rest[colon + 1..]);
        let k = self.keys.iter().find(|k| k.name.as_bytes() == name).ok_or_else(|| {
            Error::Backend(format!(
                "value of {} is encrypted with key {:?}, which the encryption configuration does not have",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(name)
            ))
        })?;
        if body.len() < NONCE_LEN {
            return Err(Error::Backend("malformed encrypted value".into()));
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Backend("malformed nonce".into()))?;
        let mut data = sealed.to_vec();
        let plain = k.key.open_in_place(nonce, Aad::from(key), &mut data).map_err(|_| {
            Error::Backend(format!(
                "failed to decrypt the value of {}: wrong key or damaged data",
                String::from_utf8_lossy(key)
            ))
        })?;
        let stale = !self.encrypt || k.name != self.keys[0].name;
        Ok((plain.to_vec(), stale))
    }
}

/// A store whose values under some key prefixes are encrypted at rest.
pub struct Encrypted {
    inner: Arc<dyn Store>,
    keys: Arc<Keyring>,
    prefixes: Vec<Vec<u8>>,
    rng: SystemRandom,
}

impl Encrypted {
    /// Wraps `inner`, encrypting values of keys starting with one of `prefixes`.
    pub fn new(inner: Arc<dyn Store>, keys: Keyring, prefixes: Vec<Vec<u8>>) -> Encrypted {
        Encrypted { inner, keys: Arc::new(keys), prefixes, rng: SystemRandom::new() }
    }

    fn covered(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }

    fn open(&self, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>> {
        if !self.covered(key) {
            return Ok(value);
        }
        self.keys.decrypt(key, &value).map(|(v, _)| v)
    }

    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        kv.value = self.open(&kv.key, std::mem::take(&mut kv.value))?;
        Ok(kv)
    }

    fn seal(&self, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>> {
        if !self.covered(key) {
            return Ok(value);
        }
        self.keys.encrypt(&self.rng, key, &value)
    }

    /// Re-encrypts every covered value not written with the first key (or not encrypted),
    /// each under a precondition on its revision (a concurrent write wins). Returns how many
    /// were rewritten.
    pub async fn rewrite_stale(&self) -> Result<usize> {
        let mut n = 0;
        for prefix in &self.prefixes {
            let end = crate::prefix_end(prefix);
            let kvs = self.inner.range(prefix, &end, 0).await?.kvs;
            for kv in kvs {
                let (plain, stale) = self.keys.decrypt(&kv.key, &kv.value)?;
                if !stale {
                    continue;
                }
                let sealed = self.keys.encrypt(&self.rng, &kv.key, &plain)?;
                let op = Op::put(kv.key, sealed, crate::Precondition::ModRevision(kv.mod_revision));
                match self.inner.commit(Txn::single(op)).await {
                    Ok(_) => n += 1,
                    Err(Error::PreconditionFailed { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }
}

impl Store for Encrypted {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move {
            match self.inner.get(key).await? {
                Some(kv) => Ok(Some(self.open_kv(kv)?)),
                None => Ok(None),
            }
        })
    }

    fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<RangeResult>> {
        Box::pin(async move {
            let mut r = self.inner.range(start, end, limit).await?;
            r.kvs = r.kvs.into_iter().map(|kv| self.open_kv(kv)).collect::<Result<_>>()?;
            Ok(r)
        })
    }

    fn commit(&self, txn: Txn) -> BoxFuture<'_, Result<CommitResult>> {
        Box::pin(async move {
            let mut ops = Vec::with_capacity(txn.ops.len());
            for op in txn.ops {
                ops.push(match op {
                    Op::Put { key, value, precondition } => {
                        let value = self.seal(&key, value)?;
                        Op::Put { key, value, precondition }
                    }
                    Op::Delete { key, precondition, last_value } => {
                        let last_value = match last_value {
                            Some(v) => Some(self.seal(&key, v)?),
                            None => None,
                        };
                        Op::Delete { key, precondition, last_value }
                    }
                    Op::Update { key, update } if self.covered(&key) => {
                        // The update sees and gives plaintext.
                        let (keys, rng, k) = (self.keys.clone(), self.rng.clone(), key.clone());
                        let sealed = crate::Update::new(move |stored| {
                            let (plain, _) = keys.decrypt(&k, stored).map_err(|e| e.to_string())?;
                            let new = (update.0)(&plain)?;
                            keys.encrypt(&rng, &k, &new).map_err(|e| e.to_string())
                        });
                        Op::Update { key, update: sealed }
                    }
                    op @ Op::Update { .. } => op,
                });
            }
            let mut r = self.inner.commit(Txn { ops }).await?;
            r.previous = r
                .previous
                .into_iter()
                .map(|p| p.map(|kv| self.open_kv(kv)).transpose())
                .collect::<Result<_>>()?;
            Ok(r)
        })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<u64>> {
        self.inner.current_revision()
    }

    fn changes(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Change>>> {
        Box::pin(async move {
            let changes = self.inner.changes(after, limit).await?;
            changes
                .into_iter()
                .map(|mut c| {
                    c.value = self.open(&c.key, std::mem::take(&mut c.value))?;
                    Ok(c)
                })
                .collect()
        })
    }

    fn compact(&self, before: u64) -> BoxFuture<'_, Result<u64>> {
        self.inner.compact(before)
    }

    fn compacted_revision(&self) -> BoxFuture<'_, Result<u64>> {
        self.inner.compacted_revision()
    }

    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Lease>> {
        self.inner.acquire_lease(name, holder, ttl)
    }

    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str, token: u64) -> BoxFuture<'a, Result<()>> {
        self.inner.release_lease(name, holder, token)
    }

    fn get_lease<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>>> {
        self.inner.get_lease(name)
    }

    fn subscribe_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe_commits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Precondition, RedbStore};

    fn ring(names: &[(&str, u8)], identity: bool) -> Keyring {
        Keyring::new(names.iter().map(|(n, b)| Key::new(n, &[*b; 32]).unwrap()).collect(), identity).unwrap()
    }

    #[tokio::test]
    async fn values_are_ciphertext_below_and_plaintext_above() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let enc = Encrypted::new(raw.clone(), ring(&[("key1", 1)], false), vec![b"/s/".to_vec()]);
        enc.commit(Txn::single(Op::put(b"/s/a".to_vec(), b"top secret".to_vec(), Precondition::Absent)))
            .await
            .unwrap();
        enc.commit(Txn::single(Op::put(b"/p/a".to_vec(), b"public".to_vec(), Precondition::Absent)))
            .await
            .unwrap();
        assert_eq!(enc.get(b"/s/a").await.unwrap().unwrap().value, b"top secret");
        let below = raw.get(b"/s/a").await.unwrap().unwrap().value;
        assert!(below.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!below.windows(10).any(|w| w == b"top secret"));
        assert_eq!(raw.get(b"/p/a").await.unwrap().unwrap().value, b"public", "other prefixes untouched");
        let ch = enc.changes(0, 0).await.unwrap();
        assert_eq!(ch[0].value, b"top secret");
        assert!(
            raw.changes(0, 0).await.unwrap()[0].value.starts_with(PREFIX),
            "the change log is encrypted too"
        );
        // An update sees the plaintext and its result is sealed.
        let shout = crate::Update::new(|v: &[u8]| Ok(v.to_ascii_uppercase()));
        enc.commit(Txn::single(Op::Update { key: b"/s/a".to_vec(), update: shout })).await.unwrap();
        assert_eq!(enc.get(b"/s/a").await.unwrap().unwrap().value, b"TOP SECRET");
        assert!(raw.get(b"/s/a").await.unwrap().unwrap().value.starts_with(PREFIX));
        // A delete's recorded final value is encrypted as well.
        let last = Some(b"last words".to_vec());
        enc.commit(Txn::single(Op::Delete {
            key: b"/s/a".to_vec(),
            precondition: Precondition::None,
            last_value: last,
        }))
        .await
        .unwrap();
        let raw_last = raw.changes(0, 0).await.unwrap().pop().unwrap().value;
        assert!(raw_last.starts_with(PREFIX));
        assert_eq!(enc.changes(0, 0).await.unwrap().pop().unwrap().value, b"last words");
        // A value moved to another key does not decrypt (the key is authenticated).
        raw.commit(Txn::single(Op::put(b"/s/b".to_vec(), below, Precondition::None))).await.unwrap();
        assert!(enc.get(b"/s/b").await.is_err());
    }

    #[tokio::test]
    async fn rotation_reads_old_keys_and_rewrites_them() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        raw.commit(Txn::single(Op::put(b"/s/plain".to_vec(), b"old".to_vec(), Precondition::Absent)))
            .await
            .unwrap();
        let v1 = Encrypted::new(raw.clone(), ring(&[("key1", 1)], true), vec![b"/s/".to_vec()]);
        assert_eq!(v1.get(b"/s/plain").await.unwrap().unwrap().value, b"old", "identity reads plaintext");
        v1.commit(Txn::single(Op::put(b"/s/x".to_vec(), b"one".to_vec(), Precondition::Absent)))
            .await
            .unwrap();
        assert_eq!(v1.rewrite_stale().await.unwrap(), 1, "the plaintext value");
        // Rotate: key2 first, key1 still readable.
        let v2 = Encrypted::new(raw.clone(), ring(&[("key2", 2), ("key1", 1)], false), vec![b"/s/".to_vec()]);
        assert_eq!(v2.get(b"/s/x").await.unwrap().unwrap().value, b"one");
        assert_eq!(v2.rewrite_stale().await.unwrap(), 2);
        assert!(raw.get(b"/s/x").await.unwrap().unwrap().value.starts_with(b"k8s:enc:aesgcm:v1:key2:"));
        // Without key1 everything still reads.
        let v3 = Encrypted::new(raw.clone(), ring(&[("key2", 2)], false), vec![b"/s/".to_vec()]);
        assert_eq!(v3.get(b"/s/plain").await.unwrap().unwrap().value, b"old");
        // A wrong key is an error, never garbage.
        let wrong = Encrypted::new(raw.clone(), ring(&[("key2", 9)], false), vec![b"/s/".to_vec()]);
        assert!(wrong.get(b"/s/x").await.is_err());
        // Identity first: decrypt everything back to plaintext.
        let off =
            Encrypted::new(raw.clone(), ring(&[("key2", 2)], false).encrypting(false), vec![b"/s/".to_vec()]);
        assert_eq!(off.rewrite_stale().await.unwrap(), 2);
        assert_eq!(raw.get(b"/s/x").await.unwrap().unwrap().value, b"one");
        assert!(Key::new("k", &[0; 16]).is_err());
        assert!(Key::new("a:b", &[0; 32]).is_err());
    }

    #[tokio::test]
    async fn conformance_through_the_wrapper() {
        for (name, case) in crate::conformance::CASES {
            let dir = tempfile::tempdir().unwrap();
            let raw: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
            // Every key is covered, so every case runs on ciphertext.
            let enc = Encrypted::new(raw, ring(&[("key1", 7)], false), vec![Vec::new()]);
            eprintln!("conformance case {name}");
            case(&enc).await;
        }
    }
}
