-- Rejoin's own database beside Temporal's (auto-setup creates temporal + temporal_visibility).
CREATE USER rejoin WITH PASSWORD 'rejoin';
CREATE DATABASE rejoin OWNER rejoin;
