//! The client: bootstrap, metadata cache, connection per shard, control-plane calls.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use protocol::api::{
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, PartitionMetadata,
};
use protocol::names::validate_topic_name;
use protocol::{ApiKey, OffsetSpec, StorageKind};

use crate::connection::{Connection, ConnectionConfig, OwnedReply, Request};
use crate::error::ClientError;
use crate::metadata::{Metadata, shard_endpoint};
use crate::retry::RetryPolicy;

/// Where requests for a partition go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// To the leader shard's own port (`ShardAddress::port`): no hop inside the broker.
    #[default]
    ShardAware,
    /// Everything over one connection to the bootstrap address, whichever shard the kernel
    /// gave it; the broker forwards to the owner (one hop). Exercises cross-core forwarding.
    SharedPort,
}

/// How a [`Client`] connects and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Where partition requests go.
    pub routing: Routing,
    /// Timeouts and bounds of every connection the client opens.
    pub connection: ConnectionConfig,
    /// Retries of idempotent calls (metadata, list offsets) on retriable errors.
    pub retry: RetryPolicy,
    /// Sent in the `ApiVersions` handshake on every connection.
    pub client_software: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            routing: Routing::default(),
            connection: ConnectionConfig::default(),
            retry: RetryPolicy::default(),
            client_software: concat!("ringmq-client/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// Names one connection a [`Client`] opened. A reconnect to the same address gets a new id,
/// so a request sent on the old connection is never matched against the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

/// The request [`Client::create_topic`] sends: `partitions` partitions, each on
/// `replication_factor` shards, on disk, kept forever, acknowledging `all` produces once a
/// majority of replicas (`replication_factor / 2 + 1`) has them. Change its fields and send
/// it with [`Client::create_topic_with`] for other settings (storage, retention, ...).
pub fn topic_request(name: &str, partitions: u32, replication_factor: u16) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.to_string(),
        partitions,
        replication_factor,
        min_insync: (replication_factor / 2 + 1).min(replication_factor.max(1)),
        retention_ms: None,
        retention_bytes: None,
        storage: StorageKind::Disk,
    }
}

/// A blocking client of one ringmq broker.
///
/// Owner: one thread (`&mut self` everywhere). Holds a metadata cache and one connection per
/// address it talks to: the bootstrap address for control calls (metadata, create, delete),
/// and, with [`Routing::ShardAware`], each leader shard's own port for partition calls.
/// Every connection starts with an `ApiVersions` handshake.
///
/// On error: a connection that fails is dropped and reopened on next use; a retriable error
/// marks the metadata stale, so the next partition call refreshes it first.
#[derive(Debug)]
pub struct Client {
    bootstrap: String,
    config: ClientConfig,
    connections: HashMap<ConnectionId, Connection>,
    by_address: HashMap<String, ConnectionId>,
    next_connection_id: u64,
    /// Empty until the first refresh, which `connect` does.
    metadata: Metadata,
    metadata_stale: bool,
    metadata_refreshes: u64,
}

impl Client {
    /// Connects to `bootstrap` (`host:port`, the broker's shared port), handshakes and loads
    /// the metadata, retrying retriable failures per `config.retry`. `Config` for a bad
    /// config; otherwise the last connection or broker error.
    pub fn connect(bootstrap: &str, config: ClientConfig) -> Result<Client, ClientError> {
        config.connection.validate()?;
        config.retry.validate()?;
        let mut client = Client {
            bootstrap: bootstrap.to_string(),
            config,
            connections: HashMap::new(),
            by_address: HashMap::new(),
            next_connection_id: 0,
            metadata: Metadata::default(),
            metadata_stale: true,
            metadata_refreshes: 0,
        };
        client.metadata()?;
        Ok(client)
    }

    /// The configuration the client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The `host:port` the client bootstrapped from (the broker's shared port).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Fetches fresh metadata (all topics) from the bootstrap address, with retries.
    pub fn metadata(&mut self) -> Result<&Metadata, ClientError> {
        let policy = self.config.retry;
        policy.run(self, Client::refresh_metadata, Client::after_failure)?;
        Ok(&self.metadata)
    }

    /// The metadata as last fetched, without asking the broker.
    pub fn cached_metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Marks the cached metadata stale: the next partition call refreshes it first.
    pub fn invalidate_metadata(&mut self) {
        self.metadata_stale = true;
    }

    /// How many times metadata was fetched from the broker.
    pub fn metadata_refreshes(&self) -> u64 {
        self.metadata_refreshes
    }

    /// The names of every topic, from fresh metadata.
    pub fn list_topics(&mut self) -> Result<Vec<String>, ClientError> {
        let metadata = self.metadata()?;
        Ok(metadata.topics().iter().map(|t| t.name.clone()).collect())
    }

    /// Creates a topic with [`topic_request`]'s settings. Returns once the broker made the
    /// change durable and every shard applied it. `InvalidName` before sending for a name the
    /// broker would refuse; `Broker` with the broker's code and message otherwise (for
    /// example `TOPIC_ALREADY_EXISTS`). Not retried: a retry after a lost answer would report
    /// that the topic exists.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
    ) -> Result<(), ClientError> {
        self.create_topic_with(&topic_request(name, partitions, replication_factor))
    }

    /// Creates a topic with every setting spelled out. Errors as [`create_topic`].
    ///
    /// [`create_topic`]: Self::create_topic
    pub fn create_topic_with(&mut self, request: &CreateTopicRequest) -> Result<(), ClientError> {
        validate_topic_name(&request.name)?;
        let bootstrap = self.bootstrap.clone();
        let response: CreateTopicResponse = self.call(&bootstrap, request)?;
        self.invalidate_metadata();
        if !response.error.is_ok() {
            return Err(ClientError::broker(
                ApiKey::CreateTopic,
                response.error,
                response.message,
            ));
        }
        Ok(())
    }

    /// Deletes a topic; returns once the change is durable and every shard applied it.
    /// `Broker` with the broker's code and message on failure. Not retried.
    pub fn delete_topic(&mut self, name: &str) -> Result<(), ClientError> {
        validate_topic_name(name)?;
        let bootstrap = self.bootstrap.clone();
        let response: DeleteTopicResponse = self.call(
            &bootstrap,
            &DeleteTopicRequest {
                name: name.to_string(),
            },
        )?;
        self.invalidate_metadata();
        if !response.error.is_ok() {
            return Err(ClientError::broker(
                ApiKey::DeleteTopic,
                response.error,
                response.message,
            ));
        }
        Ok(())
    }

    /// The offset `spec` names in one partition: the log start (`Earliest`), the next offset
    /// to be written (`Latest`), or the first record at or after a timestamp in ms. Asks the
    /// partition's leader, retrying retriable errors per the retry policy.
    pub fn list_offsets(
        &mut self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ClientError> {
        let policy = self.config.retry;
        policy.run(
            self,
            |client| {
                let address = client.partition_address(topic, partition)?;
                let request = ListOffsetsRequest {
                    topic: topic.to_string(),
                    partition,
                    spec,
                };
                let response: ListOffsetsResponse = client.call(&address, &request)?;
                if !response.error.is_ok() {
                    return Err(ClientError::broker(ApiKey::ListOffsets, response.error, ""));
                }
                Ok(response.offset)
            },
            Client::after_failure,
        )
    }

    /// The `host:port` that partition requests go to under the configured routing (refreshes
    /// stale metadata first): the bootstrap address with [`Routing::SharedPort`], the leader's
    /// shard port with [`Routing::ShardAware`]. Errors as a partition lookup in
    /// [`Metadata::partition`]; with `ShardAware` also as [`leader_address`](Self::leader_address).
    pub fn partition_address(
        &mut self,
        topic: &str,
        partition: u32,
    ) -> Result<String, ClientError> {
        match self.config.routing {
            // The broker forwards to the leader: its address is not needed, only that the
            // partition exists.
            Routing::SharedPort => {
                self.fresh_partition(topic, partition)?;
                Ok(self.bootstrap.clone())
            }
            Routing::ShardAware => self.leader_address(topic, partition),
        }
    }

    /// The `host:port` of the partition leader's own shard port, whatever the routing
    /// (subscriptions are served only there). Refreshes stale metadata first (one attempt:
    /// callers retry). Errors as a partition lookup in [`Metadata::partition`], and
    /// `UnknownShard` when the metadata lists no address for the leader.
    pub fn leader_address(&mut self, topic: &str, partition: u32) -> Result<String, ClientError> {
        let leader = self.fresh_partition(topic, partition)?.leader_shard;
        self.metadata
            .shard_address(leader)
            .map(|shard| shard_endpoint(shard, &self.bootstrap))
            .ok_or(ClientError::UnknownShard(leader))
    }

    /// The partition's metadata, refreshed first when stale or when the topic is not in it
    /// (one attempt: callers retry). Errors as [`Metadata::partition`].
    fn fresh_partition(
        &mut self,
        topic: &str,
        partition: u32,
    ) -> Result<&PartitionMetadata, ClientError> {
        if self.metadata_stale || self.metadata.topic(topic).is_none() {
            self.refresh_metadata()?;
        }
        self.metadata.partition(topic, partition)
    }

    /// The connection for the partition's leader, opened if needed. One attempt: callers
    /// retry.
    pub(crate) fn route(
        &mut self,
        topic: &str,
        partition: u32,
    ) -> Result<ConnectionId, ClientError> {
        let address = self.partition_address(topic, partition)?;
        self.connection_to(&address).map(|(id, _)| id)
    }

    pub(crate) fn connection(&mut self, id: ConnectionId) -> Option<&mut Connection> {
        self.connections.get_mut(&id)
    }

    /// Forgets a connection (closing it); the next call to its address reconnects.
    pub(crate) fn drop_connection(&mut self, id: ConnectionId) {
        if let Some(mut connection) = self.connections.remove(&id) {
            connection.close("dropped by the client");
        }
        self.by_address.retain(|_, known| *known != id);
    }

    /// What to do after a retriable failure: look the leader up again before the next try.
    pub(crate) fn after_failure(&mut self, _error: &ClientError) {
        self.invalidate_metadata();
    }

    /// The open connection to `address`, connecting and handshaking if there is none.
    fn connection_to(
        &mut self,
        address: &str,
    ) -> Result<(ConnectionId, &mut Connection), ClientError> {
        if let Some(&id) = self.by_address.get(address)
            && self.connections.get(&id).is_some_and(Connection::is_closed)
        {
            self.drop_connection(id);
        }
        let id = match self.by_address.get(address) {
            Some(&id) => id,
            None => {
                let id = ConnectionId(self.next_connection_id);
                self.next_connection_id += 1;
                self.by_address.insert(address.to_string(), id);
                id
            }
        };
        match self.connections.entry(id) {
            Entry::Occupied(open) => Ok((id, open.into_mut())),
            Entry::Vacant(slot) => {
                // A failed connect leaves the id reserved for this address and no
                // connection under it; nothing was sent on it, so reusing it is safe.
                let connection = Client::open(&self.config, address)?;
                Ok((id, slot.insert(connection)))
            }
        }
    }

    /// A new connection to `address` with this client's settings, handshake done, that the
    /// client does not keep: for a caller that needs one of its own (a subscription, whose
    /// stream of deliveries and whose failures must not mix with other calls'). One attempt.
    pub(crate) fn open_connection(&self, address: &str) -> Result<Connection, ClientError> {
        Client::open(&self.config, address)
    }

    fn open(config: &ClientConfig, address: &str) -> Result<Connection, ClientError> {
        let mut connection = Connection::connect(address, config.connection)?;
        connection.handshake(&config.client_software)?;
        Ok(connection)
    }

    /// One request to `address` and its response; drops the connection if it failed.
    fn call<Req: Request, Resp: OwnedReply>(
        &mut self,
        address: &str,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        let (id, connection) = self.connection_to(address)?;
        let result = connection.request(body);
        if connection.is_closed() {
            self.drop_connection(id);
        }
        result
    }

    /// One metadata request to the bootstrap address (no retry).
    fn refresh_metadata(&mut self) -> Result<(), ClientError> {
        let bootstrap = self.bootstrap.clone();
        let response: MetadataResponse =
            self.call(&bootstrap, &MetadataRequest { topics: vec![] })?;
        self.metadata_refreshes += 1;
        if !response.error.is_ok() {
            return Err(ClientError::broker(ApiKey::Metadata, response.error, ""));
        }
        self.metadata = Metadata::from_response(response);
        self.metadata_stale = false;
        Ok(())
    }
}
