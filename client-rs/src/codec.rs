//! How `once` turns the work's result into the stored bytes and a replay back into a value.
//!
//! The server stores and replays exact bytes; a codec must therefore be deterministic enough
//! that a replayed value means the same as the original. Pick one whose round trip is
//! lossless for your type (JSON turns tuples into lists and map keys into strings).

use crate::error::BoxError;

/// Encodes the response of the work and decodes a stored one.
pub trait Codec {
    /// The type the work returns and every caller receives.
    type Value;

    /// The bytes to store for `value`.
    fn encode(&self, value: &Self::Value) -> Result<Vec<u8>, BoxError>;

    /// The value of stored bytes.
    fn decode(&self, bytes: &[u8]) -> Result<Self::Value, BoxError>;
}

/// The default codec: the work returns the bytes to store.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Value = Vec<u8>;

    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, BoxError> {
        Ok(value.clone())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, BoxError> {
        Ok(bytes.to_vec())
    }
}

/// Serde JSON: the work returns a `T`, stored as its JSON text.
#[cfg(feature = "json")]
pub struct Json<T>(std::marker::PhantomData<fn() -> T>);

#[cfg(feature = "json")]
impl<T> Json<T> {
    /// The JSON codec for `T`.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

#[cfg(feature = "json")]
impl<T> Default for Json<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "json")]
impl<T> Clone for Json<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

#[cfg(feature = "json")]
impl<T> std::fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

#[cfg(feature = "json")]
impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec for Json<T> {
    type Value = T;

    fn encode(&self, value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_exactly() {
        let v = vec![0u8, 255, 10, 13];
        assert_eq!(
            BytesCodec.decode(&BytesCodec.encode(&v).unwrap()).unwrap(),
            v
        );
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trips_and_rejects_garbage() {
        let c = Json::<std::collections::BTreeMap<String, u32>>::new();
        let v = [("a".to_owned(), 1), ("b".to_owned(), 2)]
            .into_iter()
            .collect();
        assert_eq!(c.decode(&c.encode(&v).unwrap()).unwrap(), v);
        assert!(c.decode(b"not json").is_err());
    }
}
