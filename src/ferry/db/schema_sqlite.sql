-- Generated from the models by `python -m ferry.db.schema_sqlite`: do not edit by hand.
CREATE TABLE api_credentials (
	access_key VARCHAR(64) NOT NULL, 
	project_id VARCHAR(32) NOT NULL, 
	secret TEXT NOT NULL, 
	created_at FLOAT NOT NULL, 
	revoked_at FLOAT, 
	CONSTRAINT pk_api_credentials PRIMARY KEY (access_key)
);

CREATE INDEX ix_api_credentials_project_id ON api_credentials (project_id);

CREATE TABLE api_seen_signatures (
	signature VARCHAR(64) NOT NULL, 
	expires_at FLOAT NOT NULL, 
	CONSTRAINT pk_api_seen_signatures PRIMARY KEY (signature)
);

CREATE INDEX ix_api_seen_signatures_expires_at ON api_seen_signatures (expires_at);

CREATE TABLE api_tokens (
	token_hash VARCHAR(64) NOT NULL, 
	project_id VARCHAR(32) NOT NULL, 
	created_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	revoked_at FLOAT, 
	access_key VARCHAR(64), 
	CONSTRAINT pk_api_tokens PRIMARY KEY (token_hash)
);

CREATE INDEX ix_api_tokens_project_id ON api_tokens (project_id);

CREATE TABLE cluster_budgets (
	name VARCHAR(255) NOT NULL, 
	rate FLOAT NOT NULL, 
	burst FLOAT NOT NULL, 
	tokens FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	CONSTRAINT pk_cluster_budgets PRIMARY KEY (name)
);

CREATE TABLE cluster_settings (
	name VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	CONSTRAINT pk_cluster_settings PRIMARY KEY (name)
);

CREATE TABLE cluster_workers (
	id VARCHAR(128) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	host VARCHAR(255) NOT NULL, 
	pid INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	units_in_flight INTEGER NOT NULL, 
	units_done BIGINT NOT NULL, 
	started_at FLOAT NOT NULL, 
	heartbeat_at FLOAT NOT NULL, 
	version VARCHAR(32) NOT NULL, 
	info TEXT NOT NULL, 
	CONSTRAINT pk_cluster_workers PRIMARY KEY (id)
);

CREATE TABLE jobs (
	id VARCHAR(36) NOT NULL, 
	fingerprint VARCHAR(64) NOT NULL, 
	spec TEXT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	watermark TEXT, 
	listing_done INTEGER NOT NULL, 
	total_num BIGINT NOT NULL, 
	total_size BIGINT NOT NULL, 
	created_at FLOAT NOT NULL, 
	started_at FLOAT, 
	finished_at FLOAT, 
	error TEXT, 
	CONSTRAINT pk_jobs PRIMARY KEY (id)
);

CREATE INDEX ix_jobs_fingerprint ON jobs (fingerprint);

CREATE TABLE metric_snapshots (
	source VARCHAR(160) NOT NULL, 
	updated_at FLOAT NOT NULL, 
	samples TEXT NOT NULL, 
	CONSTRAINT pk_metric_snapshots PRIMARY KEY (source)
);

CREATE TABLE privacy_agreements (
	project_id VARCHAR(32) NOT NULL, 
	accepted_at FLOAT NOT NULL, 
	CONSTRAINT pk_privacy_agreements PRIMARY KEY (project_id)
);

CREATE TABLE sync_tasks (
	id VARCHAR(36) NOT NULL, 
	project_id VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	spec TEXT NOT NULL, 
	secrets TEXT NOT NULL, 
	options TEXT NOT NULL, 
	generation INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	last_start_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	reconciled_at FLOAT, 
	reconcile_owner VARCHAR(128), 
	reconcile_lease_until FLOAT, 
	last_error TEXT, 
	error_code VARCHAR(16), 
	error_msg TEXT, 
	notify_token_hash VARCHAR(64), 
	CONSTRAINT pk_sync_tasks PRIMARY KEY (id), 
	CONSTRAINT uq_sync_tasks_notify_token_hash UNIQUE (notify_token_hash)
);

CREATE INDEX ix_sync_tasks_project_id ON sync_tasks (project_id);

CREATE TABLE task_groups (
	id VARCHAR(36) NOT NULL, 
	project_id VARCHAR(32) NOT NULL, 
	status INTEGER NOT NULL, 
	description TEXT NOT NULL, 
	task_type VARCHAR(16) NOT NULL, 
	src_spec TEXT NOT NULL, 
	dst_spec TEXT NOT NULL, 
	options TEXT NOT NULL, 
	bandwidth_policy TEXT NOT NULL, 
	secrets TEXT, 
	split_state TEXT NOT NULL, 
	objects BIGINT NOT NULL, 
	bytes BIGINT NOT NULL, 
	task_count INTEGER NOT NULL, 
	error_code VARCHAR(16), 
	error_msg TEXT, 
	smn_result TEXT, 
	created_at FLOAT NOT NULL, 
	started_at FLOAT, 
	finished_at FLOAT, 
	updated_at FLOAT NOT NULL, 
	lease_owner VARCHAR(128), 
	lease_expires FLOAT, 
	retry_at FLOAT, 
	deleted_at FLOAT, 
	CONSTRAINT pk_task_groups PRIMARY KEY (id)
);

CREATE INDEX ix_task_groups_project ON task_groups (project_id, created_at);

CREATE INDEX ix_task_groups_status ON task_groups (status);

CREATE TABLE work_units (
	id INTEGER NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	owner_kind VARCHAR(16) NOT NULL, 
	owner_id VARCHAR(64) NOT NULL, 
	run INTEGER NOT NULL, 
	start_after TEXT, 
	end_key TEXT, 
	spec TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	sent_at FLOAT, 
	lease_owner VARCHAR(128), 
	lease_expires FLOAT, 
	heartbeat_at FLOAT, 
	watermark TEXT, 
	listed BIGINT NOT NULL, 
	listed_bytes BIGINT NOT NULL, 
	objects_done BIGINT NOT NULL, 
	bytes_done BIGINT NOT NULL, 
	error TEXT, 
	created_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	finished_at FLOAT, 
	CONSTRAINT pk_work_units PRIMARY KEY (id)
);

CREATE INDEX ix_work_units_lease ON work_units (state, lease_expires);

CREATE INDEX ix_work_units_owner ON work_units (owner_kind, owner_id, run, state);

CREATE INDEX ix_work_units_sent ON work_units (state, sent_at);

CREATE TABLE job_objects (
	job_id VARCHAR(36) NOT NULL, 
	"key" TEXT NOT NULL, 
	status VARCHAR(8) NOT NULL, 
	size BIGINT NOT NULL, 
	etag TEXT, 
	reason TEXT, 
	updated_at FLOAT NOT NULL, 
	CONSTRAINT pk_job_objects PRIMARY KEY (job_id, "key"), 
	CONSTRAINT fk_job_objects_job_id_jobs FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);

CREATE INDEX ix_job_objects_status ON job_objects (job_id, status);

CREATE TABLE job_parts (
	job_id VARCHAR(36) NOT NULL, 
	"key" TEXT NOT NULL, 
	part_number INTEGER NOT NULL, 
	etag TEXT NOT NULL, 
	size BIGINT NOT NULL, 
	crc64 VARCHAR(16), 
	md5 VARCHAR(32), 
	CONSTRAINT pk_job_parts PRIMARY KEY (job_id, "key", part_number), 
	CONSTRAINT fk_job_parts_job_id_jobs FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);

CREATE TABLE job_uploads (
	job_id VARCHAR(36) NOT NULL, 
	"key" TEXT NOT NULL, 
	upload_id TEXT NOT NULL, 
	src_etag TEXT, 
	size BIGINT NOT NULL, 
	part_size BIGINT NOT NULL, 
	created_at FLOAT NOT NULL, 
	CONSTRAINT pk_job_uploads PRIMARY KEY (job_id, "key"), 
	CONSTRAINT fk_job_uploads_job_id_jobs FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);

CREATE TABLE migration_tasks (
	id BIGINT NOT NULL, 
	project_id VARCHAR(32) NOT NULL, 
	group_id VARCHAR(100), 
	group_type VARCHAR(16) NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	description TEXT NOT NULL, 
	task_type VARCHAR(16) NOT NULL, 
	status INTEGER NOT NULL, 
	priority INTEGER NOT NULL, 
	src_spec TEXT NOT NULL, 
	dst_spec TEXT NOT NULL, 
	options TEXT NOT NULL, 
	bandwidth_policy TEXT NOT NULL, 
	secrets TEXT, 
	job_id VARCHAR(36), 
	run_mode VARCHAR(16) NOT NULL, 
	total_num BIGINT NOT NULL, 
	total_size BIGINT NOT NULL, 
	success_num BIGINT NOT NULL, 
	skip_num BIGINT NOT NULL, 
	fail_num BIGINT NOT NULL, 
	size_only_num BIGINT NOT NULL, 
	complete_size BIGINT NOT NULL, 
	real_size BIGINT NOT NULL, 
	restoring_num BIGINT DEFAULT '0' NOT NULL, 
	speed BIGINT NOT NULL, 
	left_time BIGINT, 
	progress FLOAT NOT NULL, 
	is_query_over INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	started_at FLOAT, 
	run_started_at FLOAT, 
	elapsed FLOAT NOT NULL, 
	finished_at FLOAT, 
	updated_at FLOAT NOT NULL, 
	error_code VARCHAR(16), 
	error_msg TEXT, 
	records TEXT, 
	smn_result TEXT, 
	lease_owner VARCHAR(128), 
	lease_expires FLOAT, 
	attempts INTEGER NOT NULL, 
	retry_at FLOAT, 
	deleted_at FLOAT, 
	CONSTRAINT pk_migration_tasks PRIMARY KEY (id), 
	CONSTRAINT fk_migration_tasks_job_id_jobs FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE SET NULL
);

CREATE INDEX ix_migration_tasks_group ON migration_tasks (project_id, group_id);

CREATE INDEX ix_migration_tasks_pickup ON migration_tasks (status, priority, created_at);

CREATE INDEX ix_migration_tasks_project ON migration_tasks (project_id, created_at);

CREATE TABLE sync_events (
	task_id VARCHAR(36) NOT NULL, 
	"key" TEXT NOT NULL, 
	state VARCHAR(8) NOT NULL, 
	version INTEGER NOT NULL, 
	attempts INTEGER NOT NULL, 
	received_at FLOAT NOT NULL, 
	next_attempt_at FLOAT NOT NULL, 
	lease_owner VARCHAR(128), 
	lease_until FLOAT, 
	last_reason TEXT, 
	updated_at FLOAT NOT NULL, 
	CONSTRAINT pk_sync_events PRIMARY KEY (task_id, "key"), 
	CONSTRAINT fk_sync_events_task_id_sync_tasks FOREIGN KEY(task_id) REFERENCES sync_tasks (id) ON DELETE CASCADE
);

CREATE INDEX ix_sync_events_due ON sync_events (state, next_attempt_at);

CREATE INDEX ix_sync_events_owner ON sync_events (lease_owner);

CREATE INDEX ix_sync_events_task_state ON sync_events (task_id, state);

CREATE TABLE sync_stats (
	task_id VARCHAR(36) NOT NULL, 
	bucket_start BIGINT NOT NULL, 
	request BIGINT NOT NULL, 
	success BIGINT NOT NULL, 
	failure BIGINT NOT NULL, 
	skip BIGINT NOT NULL, 
	size BIGINT NOT NULL, 
	CONSTRAINT pk_sync_stats PRIMARY KEY (task_id, bucket_start), 
	CONSTRAINT fk_sync_stats_task_id_sync_tasks FOREIGN KEY(task_id) REFERENCES sync_tasks (id) ON DELETE CASCADE
);

CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

