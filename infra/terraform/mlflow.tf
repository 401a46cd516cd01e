# The MLflow tracking server: Postgres backend (its own `mlflow` database, created by an init Job), S3 artifacts,
# MLflow's basic-auth app in front (users and per-model permissions in a `mlflow_auth` database), and a
# NetworkPolicy that lets only the pipeline's pods (label mlflow-client=true) and the UI's ingress reach it.
# Credentials come from Secrets Manager through the External Secrets Operator (addons.tf) and follow rotation
# (refreshed hourly; Reloader rolls the server on a change); none passes through Terraform state. The ExternalSecret resources need the operator's CRDs:
# on a new cluster, `terraform apply -target=helm_release.external_secrets` first.

resource "kubernetes_manifest" "secret_store" {
  manifest = {
    apiVersion = "external-secrets.io/v1beta1"
    kind       = "ClusterSecretStore"
    metadata   = { name = "aws-secrets-manager" }
    spec = { provider = { aws = {
      service = "SecretsManager"
      region  = var.region
      auth = { jwt = { serviceAccountRef = {
        name      = "external-secrets"
        namespace = "external-secrets"
      } } }
    } } }
  }
  depends_on = [helm_release.external_secrets]
}

# Filled by the operator, never by Terraform: the MLflow admin (username, password, flask_secret_key), the
# pipeline's MLflow user (username, password) and the MLflow server's own database login (username, password).
resource "aws_secretsmanager_secret" "mlflow_users" {
  for_each   = toset(["admin", "pipeline", "database"])
  name       = "${var.name}/mlflow/${each.key}"
  kms_key_id = aws_kms_key.this.arn
  # checkov:skip=CKV2_AWS_57: user passwords are rotated by the MLflow admin through MLflow's own API
}

locals {
  mlflow_artifact_prefix = "mlflow" # under the artifacts bucket: the server's alone (iam.tf denies the stages)
  db_secret              = aws_db_instance.metadata.master_user_secret[0].secret_arn
  db_url                 = "{{ .username }}:{{ .password | urlquery }}@${aws_db_instance.metadata.endpoint}"
  # The server's own login: it owns the mlflow and mlflow_auth databases (created by the init Job) and nothing of
  # Airflow's; the master user above is only the init Job's.
  mlflow_db_url = "{{ .mlflow_db_user }}:{{ .mlflow_db_password | urlquery }}@${aws_db_instance.metadata.endpoint}"
  # What create_databases.py reads: the init Job's and the server pods' init container's, never the server's
  database_login_keys = ["ADMIN_DATABASE_URI", "MLFLOW_DB_USER", "MLFLOW_DB_PASSWORD"]
  # One ExternalSecret per Kubernetes secret: what it holds, rendered from Secrets Manager values.
  synced = {
    mlflow-db = {
      data = { username = [local.db_secret, "username"], password = [local.db_secret, "password"],
        admin_user       = [aws_secretsmanager_secret.mlflow_users["admin"].arn, "username"],
        admin_password   = [aws_secretsmanager_secret.mlflow_users["admin"].arn, "password"],
        flask_secret_key = [aws_secretsmanager_secret.mlflow_users["admin"].arn, "flask_secret_key"],
        mlflow_db_user   = [aws_secretsmanager_secret.mlflow_users["database"].arn, "username"],
      mlflow_db_password = [aws_secretsmanager_secret.mlflow_users["database"].arn, "password"] }
      template = {
        # +psycopg2: SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3, which the image does not carry
        MLFLOW_BACKEND_STORE_URI = "postgresql+psycopg2://${local.mlflow_db_url}/mlflow?sslmode=require"
        # The init Job's alone (env_from): it creates the role below with this password, on every run
        ADMIN_DATABASE_URI = "postgresql://${local.db_url}/airflow?sslmode=require" # libpq's own URI
        MLFLOW_DB_USER     = "{{ .mlflow_db_user }}"
        MLFLOW_DB_PASSWORD = "{{ .mlflow_db_password }}"
        # basic-auth's CSRF key: one for all replicas, or a form posted to one is refused by the other
        MLFLOW_FLASK_SERVER_SECRET_KEY = "{{ .flask_secret_key }}"
        "basic_auth.ini" = join("\n", ["[mlflow]", "default_permission = READ",
          "database_uri = postgresql+psycopg2://${local.mlflow_db_url}/mlflow_auth?sslmode=require",
          "admin_username = {{ .admin_user }}", "admin_password = {{ .admin_password }}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth", ""])
      }
    }
    chat-retrain-mlflow-auth = {
      data = { user = [aws_secretsmanager_secret.mlflow_users["pipeline"].arn, "username"],
      password = [aws_secretsmanager_secret.mlflow_users["pipeline"].arn, "password"] }
      template = { MLFLOW_TRACKING_USERNAME = "{{ .user }}", MLFLOW_TRACKING_PASSWORD = "{{ .password }}" }
    }
  }
}

resource "kubernetes_manifest" "synced_secret" {
  for_each = local.synced
  manifest = {
    apiVersion = "external-secrets.io/v1beta1"
    kind       = "ExternalSecret"
    metadata   = { name = each.key, namespace = local.namespace }
    spec = {
      refreshInterval = "1h"
      secretStoreRef  = { name = "aws-secrets-manager", kind = "ClusterSecretStore" }
      target          = { name = each.key, template = { data = each.value.template } }
      data = [for key, source in each.value.data : {
        secretKey = key, remoteRef = { key = source[0], property = source[1] }
      }]
    }
  }
  depends_on = [kubernetes_manifest.secret_store]
}

# The RDS instance is created with only the `airflow` database: create MLflow's two next to it (idempotent).
resource "kubernetes_job_v1" "mlflow_db_init" {
  metadata {
    name      = "mlflow-db-init"
    namespace = local.namespace
  }
  spec {
    backoff_limit = 4
    template {
      metadata {
        labels = { app = "mlflow-db-init" }
      }
      spec {
        restart_policy                  = "OnFailure"
        automount_service_account_token = false
        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        container {
          name    = "create-databases"
          image   = var.mlflow_image
          command = ["python", "/opt/create_databases.py", "mlflow", "mlflow_auth"]
          env_from {
            secret_ref {
              name = "mlflow-db"
            }
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
        }
      }
    }
  }
  wait_for_completion = true
  timeouts {
    create = "10m"
  }
  depends_on = [kubernetes_manifest.synced_secret]
}

resource "kubernetes_deployment_v1" "mlflow" {
  metadata {
    name      = "mlflow"
    namespace = local.namespace
    labels    = { app = "mlflow" }
    # A rotated password reaches the server: the operator refreshes mlflow-db (refreshInterval), Reloader
    # (addons.tf) then rolls these pods, and each new pod's init container sets the role's password from the
    # secret before the server connects with it.
    annotations = { "secret.reloader.stakater.com/reload" = "mlflow-db" }
  }
  spec {
    replicas = 2
    selector {
      match_labels = { app = "mlflow" }
    }
    template {
      metadata {
        labels = { app = "mlflow" }
      }
      spec {
        service_account_name            = kubernetes_service_account_v1.mlflow.metadata[0].name
        automount_service_account_token = true # the IRSA token: S3 artifact access
        node_selector                   = { role = "cpu" }
        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        # The init Job's step again on every pod start (idempotent): after a rotation the role's password in
        # PostgreSQL is the secret's before the server below logs in with it. Only this container sees the master URI.
        init_container {
          name    = "set-database-login"
          image   = var.mlflow_image
          command = ["python", "/opt/create_databases.py", "mlflow", "mlflow_auth"]
          dynamic "env" {
            for_each = toset(local.database_login_keys)
            content {
              name = env.value
              value_from {
                secret_key_ref {
                  name = "mlflow-db"
                  key  = env.value
                }
              }
            }
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
        }
        container {
          name              = "mlflow"
          image             = var.mlflow_image
          image_pull_policy = "Always"
          # basic-auth: every request carries a user; the pipeline's user may edit its model, others read.
          args = ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", "5000",
            "--backend-store-uri", "$(MLFLOW_BACKEND_STORE_URI)",
            "--artifacts-destination", "s3://${aws_s3_bucket.this["artifacts"].bucket}/${local.mlflow_artifact_prefix}",
          "--allowed-hosts", "mlflow,mlflow.${local.namespace}.svc.cluster.local,localhost"]
          env {
            name  = "MLFLOW_AUTH_CONFIG_PATH"
            value = "/etc/mlflow/basic_auth.ini"
          }
          dynamic "env" {
            for_each = toset(["MLFLOW_BACKEND_STORE_URI", "MLFLOW_FLASK_SERVER_SECRET_KEY"])
            content {
              name = env.value
              value_from {
                secret_key_ref {
                  name = "mlflow-db"
                  key  = env.value
                }
              }
            }
          }
          port {
            container_port = 5000
          }
          resources {
            requests = { cpu = "500m", memory = "1Gi" }
            limits   = { cpu = "2", memory = "2Gi" }
          }
          liveness_probe {
            http_get {
              path = "/health" # not behind basic-auth
              port = 5000
            }
            initial_delay_seconds = 30
          }
          readiness_probe {
            http_get {
              path = "/health"
              port = 5000
            }
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
          volume_mount {
            name       = "auth-config"
            mount_path = "/etc/mlflow"
            read_only  = true
          }
        }
        volume {
          name = "tmp"
          empty_dir {}
        }
        volume {
          name = "auth-config"
          secret {
            secret_name = "mlflow-db"
            items {
              key  = "basic_auth.ini"
              path = "basic_auth.ini"
            }
          }
        }
      }
    }
  }
  depends_on = [kubernetes_job_v1.mlflow_db_init]
  # checkov:skip=CKV_K8S_43: the image is pinned by version tag (var.mlflow_image); digests are set per release
  # checkov:skip=CKV_K8S_35: mlflow server takes the backend URI as an argument; Kubernetes expands $(VAR) from env only
}

resource "kubernetes_service_v1" "mlflow" {
  metadata {
    name      = "mlflow"
    namespace = local.namespace
  }
  spec {
    selector = { app = "mlflow" }
    port {
      port        = 5000
      target_port = 5000
    }
  }
}

# Only the pipeline's pods (the DAG's runtimes label them mlflow-client=true) and the ingress controller that
# serves the UI reach the server; enforced by the VPC CNI's network policy agent (eks.tf).
resource "kubernetes_network_policy_v1" "mlflow" {
  metadata {
    name      = "mlflow-clients-only"
    namespace = local.namespace
  }
  spec {
    pod_selector {
      match_labels = { app = "mlflow" }
    }
    policy_types = ["Ingress"]
    ingress {
      from {
        pod_selector {
          match_labels = { "mlflow-client" = "true" }
        }
      }
      from {
        namespace_selector {
          match_labels = { "kubernetes.io/metadata.name" = var.mlflow_ui_namespace }
        }
      }
      ports {
        port     = "5000"
        protocol = "TCP"
      }
    }
  }
}
