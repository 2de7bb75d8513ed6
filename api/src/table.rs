//! Conversion of objects to `meta.k8s.io/v1` Table columns and rows, with upstream's
//! column sets.

use crate::ResourceInfo;
use serde_json::{json, Value};

/// A column definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name, printed upper-case by kubectl.
    pub name: &'static str,
    /// `string`, `integer`, `date`...
    pub type_: &'static str,
    /// `name` for the name column, else empty.
    pub format: &'static str,
    /// Description.
    pub description: &'static str,
    /// 0 for the default view, 1 for `-o wide` only.
    pub priority: i32,
}

impl Column {
    /// The JSON form of the column definition.
    pub fn to_json(&self) -> Value {
        json!({"name": self.name, "type": self.type_, "format": self.format,
               "description": self.description, "priority": self.priority})
    }
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DESC: &str = "Names of each container in the template.";
const IMAGES_DESC: &str = "Images referenced by each container in the template.";
const SELECTOR_DESC: &str = "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment. It must match the pod template's labels.";

const fn col(name: &'static str, type_: &'static str, priority: i32, description: &'static str) -> Column {
    Column { name, type_, format: "", description, priority }
}
const NAME: Column =
    Column { name: "Name", type_: "string", format: "name", description: NAME_DESC, priority: 0 };
const AGE: Column = col("Age", "string", 0, AGE_DESC);
const CONTAINERS: Column = col("Containers", "string", 1, CONTAINERS_DESC);
const IMAGES: Column = col("Images", "string", 1, IMAGES_DESC);
const SELECTOR: Column = col("Selector", "string", 1, SELECTOR_DESC);

/// The columns for a resource.
pub fn columns(res: &ResourceInfo) -> Vec<Column> {
    if let Some(custom) = res.custom {
        // A CRD's additionalPrinterColumns, or upstream's default: the age.
        if custom.columns.is_empty() {
            return vec![NAME, col("Age", "date", 0, AGE_DESC)];
        }
        let mut out = vec![NAME];
        out.extend(custom.columns.iter().map(|c| c.column.clone()));
        return out;
    }
    match (res.group, res.plural) {
        ("", "pods") => vec![
            NAME,
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            AGE,
            col("IP", "string", 1, "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            col("Node", "string", 1, "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName."),
            col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods."),
            col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        ("apps", "deployments") => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col("Up-to-date", "integer", 0, "Total number of non-terminating pods targeted by this deployment that have the desired template spec."),
            col("Available", "integer", 0, "Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by this deployment."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("apps", "replicasets") | ("", "replicationcontrollers") => vec![
            NAME,
            col("Desired", "integer", 0, "Replicas is the number of desired pods."),
            col("Current", "integer", 0, "Replicas is the most recently observed number of non-terminating pods."),
            col("Ready", "integer", 0, "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("autoscaling", "horizontalpodautoscalers") => vec![
            NAME,
            col("Reference", "string", 0, "Reference is the target resource name."),
            col("Targets", "string", 0, "Targets is the metrics that the HPA is targeting."),
            col("MinPods", "string", 0, "MinPods is the lower limit for the number of replicas."),
            col("MaxPods", "string", 0, "MaxPods is the upper limit for the number of replicas."),
            col("Replicas", "string", 0, "Replicas is the current number of replicas."),
            AGE,
        ],
        ("policy", "poddisruptionbudgets") => vec![
            NAME,
            col("Min Available", "string", 0, "The minimum number of pods that must be available."),
            col("Max Unavailable", "string", 0, "The maximum number of pods that may be unavailable."),
            col("Allowed Disruptions", "integer", 0, "Calculated number of pods that may be disrupted at this time."),
            AGE,
        ],
        ("apps", "statefulsets") => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            AGE,
            CONTAINERS,
            IMAGES,
        ],
        ("apps", "daemonsets") => vec![
            NAME,
            col("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod)."),
            col("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            col("Ready", "integer", 0, "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition."),
            col("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod"),
            col("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
            col("Node Selector", "string", 0, "NodeSelector is a selector which must be true for the pod to fit on a node."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("batch", "jobs") => vec![
            NAME,
            col("Status", "string", 0, "Status of the job."),
            col("Completions", "string", 0, "The number of pods which reached phase Succeeded."),
            col("Duration", "string", 0, "Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("batch", "cronjobs") => vec![
            NAME,
            col("Schedule", "string", 0, "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
            col("Timezone", "string", 0, "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
            col("Suspend", "boolean", 0, "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions."),
            col("Active", "integer", 0, "A list of pointers to currently running jobs."),
            col("Last Schedule", "string", 0, "Information when was the last time the job was successfully scheduled."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("", "nodes") => vec![
            NAME,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            AGE,
            col("Version", "string", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", 1, "List of addresses reachable to the node."),
            col("External-IP", "string", 1, "List of addresses reachable to the node."),
            col("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            col("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            col("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        ("", "services") => vec![
            NAME,
            col("Type", "string", 0, "type determines how the Service is exposed."),
            col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service and is usually assigned randomly."),
            col("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
            AGE,
            col("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
        ],
        ("", "namespaces") => vec![NAME, col("Status", "string", 0, "The status of the namespace"), AGE],
        ("", "events") => vec![
            col("Last Seen", "string", 0, "The time at which the most recent occurrence of this event was recorded."),
            col("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
            col("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            col("Object", "string", 0, "The object that this event is about."),
            col("Subobject", "string", 1, "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]."),
            col("Source", "string", 1, "The component reporting this event. Should be a short machine understandable string."),
            col("Message", "string", 0, "A human-readable description of the status of this operation."),
            col("First Seen", "string", 1, "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
            col("Count", "string", 1, "The number of times this event has occurred."),
            Column { priority: 1, ..NAME },
        ],
        ("", "configmaps") => vec![NAME, col("Data", "integer", 0, "Data contains the configuration data."), AGE],
        ("", "secrets") => vec![
            NAME,
            col("Type", "string", 0, "Used to facilitate programmatic handling of secret data."),
            col("Data", "string", 0, "Data contains the secret data."),
            AGE,
        ],
        ("", "serviceaccounts") => vec![
            NAME,
            col("Secrets", "string", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
            AGE,
        ],
        ("", "endpoints") => vec![
            NAME,
            col("Endpoints", "string", 0, "The set of all endpoints is the union of all subsets."),
            AGE,
        ],
        ("", "persistentvolumeclaims") => vec![
            NAME,
            col("Status", "string", 0, "phase represents the current phase of PersistentVolumeClaim."),
            col("Volume", "string", 0, "volumeName is the binding reference to the PersistentVolume backing this claim."),
            col("Capacity", "string", 0, "capacity represents the actual resources of the underlying volume."),
            col("Access Modes", "string", 0, "accessModes contains the actual access modes the volume backing the PVC has."),
            col("StorageClass", "string", 0, "StorageClass of the pvc"),
            col("VolumeAttributesClass", "string", 0, "VolumeAttributesClass of the pvc"),
            AGE,
            col("VolumeMode", "string", 1, "volumeMode defines what type of volume is required by the claim."),
        ],
        ("", "persistentvolumes") => vec![
            NAME,
            col("Capacity", "string", 0, "capacity is the description of the persistent volume's resources and capacity."),
            col("Access Modes", "string", 0, "accessModes contains all ways the volume can be mounted."),
            col("Reclaim Policy", "string", 0, "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim."),
            col("Status", "string", 0, "phase indicates if a volume is available, bound to a claim, or released by a claim."),
            col("Claim", "string", 0, "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim."),
            col("StorageClass", "string", 0, "StorageClass of the pv"),
            col("VolumeAttributesClass", "string", 0, "VolumeAttributesClass of the pv"),
            col("Reason", "string", 0, "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI."),
            AGE,
            col("VolumeMode", "string", 1, "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state."),
        ],
        ("apiregistration.k8s.io", "apiservices") => vec![
            NAME,
            col("Service", "string", 0, "The reference to the service that hosts this API endpoint."),
            col("Available", "string", 0, "Whether this service is available."),
            AGE,
        ],
        ("storage.k8s.io", "storageclasses") => vec![
            NAME,
            col("Provisioner", "string", 0, "provisioner indicates the type of the provisioner."),
            col("ReclaimPolicy", "string", 0, "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class. Defaults to Delete."),
            col("VolumeBindingMode", "string", 0, "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.  When unset, VolumeBindingImmediate is used. This field is only honored by servers that enable the VolumeScheduling feature."),
            col("AllowVolumeExpansion", "string", 0, "allowVolumeExpansion shows whether the storage class allow volume expand."),
            AGE,
        ],
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations" | "validatingwebhookconfigurations") => {
            vec![NAME, col("Webhooks", "integer", 0, "Webhooks indicates the number of webhooks."), AGE]
        }
        ("admissionregistration.k8s.io", "validatingadmissionpolicies") => vec![
            NAME,
            col("Validations", "integer", 0, "Validations indicates the number of validation expressions"),
            col("ParamKind", "string", 0, "ParamKind specifies the kind of resources used to parameterize this policy"),
            AGE,
        ],
        ("admissionregistration.k8s.io", "validatingadmissionpolicybindings") => vec![
            NAME,
            col("PolicyName", "string", 0, "PolicyName indicates the policy definition which the policy binding binded to"),
            col("ParamRef", "string", 0, "ParamRef indicates the param resource which sets the configration param"),
            AGE,
        ],
        ("coordination.k8s.io", "leases") => vec![
            NAME,
            col("Holder", "string", 0, "holderIdentity contains the identity of the holder of a current lease."),
            AGE,
        ],
        ("certificates.k8s.io", "certificatesigningrequests") => vec![
            NAME,
            AGE,
            col("SignerName", "string", 0, "signerName indicates the requested signer, and is a qualified name."),
            col("Requestor", "string", 0, "username contains the name of the user that created the CertificateSigningRequest."),
            col("RequestedDuration", "string", 0, "expirationSeconds is the requested duration of validity of the issued certificate."),
            col("Condition", "string", 0, "The state of the certificate request."),
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => vec![
            NAME,
            col("Created At", "date", 0, AGE_DESC),
        ],
        ("flowcontrol.apiserver.k8s.io", "flowschemas") => vec![
            NAME,
            col("PriorityLevel", "string", 0, "`name` is the name of the priority level configuration being referenced Required."),
            col("MatchingPrecedence", "string", 0, "`matchingPrecedence` is used to choose among the FlowSchemas that match a given request. The chosen FlowSchema is among those with the numerically lowest (which we take to be logically highest) MatchingPrecedence.  Each MatchingPrecedence value must be ranged in [1,10000]. Note that if the precedence is not specified, it will be set to 1000 as default."),
            col("DistinguisherMethod", "string", 0, "`distinguisherMethod` defines how to compute the flow distinguisher for requests that match this schema. `nil` specifies that the distinguisher is disabled and thus will always be the empty string."),
            AGE,
            col("MissingPL", "string", 0, "references a broken or non-existent PriorityLevelConfiguration"),
        ],
        ("flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations") => vec![
            NAME,
            col("Type", "string", 0, "`type` indicates whether this priority level is subject to limitation on request execution.  A value of `\"Exempt\"` means that requests of this priority level are not subject to a limit (and thus are never queued) and do not detract from the capacity made available to other priority levels.  A value of `\"Limited\"` means that (a) requests of this priority level _are_ subject to limits and (b) some of the server's limited capacity is made available exclusively to this priority level. Required."),
            col("NominalConcurrencyShares", "string", 0, "`nominalConcurrencyShares` (NCS) contributes to the computation of the NominalConcurrencyLimit (NominalCL) of this level."),
            col("Queues", "string", 0, "`queues` is the number of queues for this priority level. The queues exist independently at each apiserver. The value must be positive.  Setting it to 1 effectively precludes shufflesharding and thus makes the distinguisher method of associated flow schemas irrelevant.  This field has a default value of 64."),
            col("HandSize", "string", 0, "`handSize` is a small positive number that configures the shuffle sharding of requests into queues."),
            col("QueueLengthLimit", "string", 0, "`queueLengthLimit` is the maximum number of requests allowed to be waiting in a given queue of this priority level at a time; excess requests are rejected.  This value must be positive.  If not specified, it will be defaulted to 50."),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// The cells of one row, matching [`columns`]; `now` is the current time for ages.
pub fn cells(res: &ResourceInfo, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = s(Some(obj), "metadata.name").to_string();
    let age = since(ts(obj, "metadata.creationTimestamp"), now);
    let spec = obj.get("spec");
    let status = obj.get("status");
    if let Some(custom) = res.custom {
        if custom.columns.is_empty() {
            return vec![name.into(), age.into()];
        }
        let mut out = vec![Value::from(name)];
        out.extend(crate::crd::cells(custom, obj, now));
        return out;
    }
    match (res.group, res.plural) {
        ("", "pods") => pod_cells(obj, name, age, now),
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![name.into(), s(Some(obj), "metadata.creationTimestamp").into()]
        }
        ("flowcontrol.apiserver.k8s.io", "flowschemas") => {
            let method = match s(spec, "distinguisherMethod.type") {
                "" => "<none>",
                m => m,
            };
            let missing = status
                .and_then(|st| st.get("conditions"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Dangling"))
                .and_then(|c| c.get("status").and_then(Value::as_str))
                .unwrap_or("?");
            let precedence =
                spec.and_then(|sp| sp.get("matchingPrecedence")).and_then(Value::as_i64).unwrap_or(0);
            vec![
                name.into(),
                s(spec, "priorityLevelConfiguration.name").into(),
                precedence.into(),
                method.into(),
                age.into(),
                missing.into(),
            ]
        }
        ("flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations") => {
            let limited = spec.and_then(|sp| sp.get("limited"));
            let none = || Value::from("<none>");
            let field = |path: &[&str]| {
                let mut v = limited;
                for p in path {
                    v = v.and_then(|x| x.get(*p));
                }
                v.cloned().filter(|v| !v.is_null()).unwrap_or_else(none)
            };
            vec![
                name.into(),
                s(spec, "type").into(),
                field(&["nominalConcurrencyShares"]),
                field(&["limitResponse", "queuing", "queues"]),
                field(&["limitResponse", "queuing", "handSize"]),
                field(&["limitResponse", "queuing", "queueLengthLimit"]),
                age.into(),
            ]
        }
        ("certificates.k8s.io", "certificatesigningrequests") => {
            let duration = spec
                .and_then(|sp| sp.get("expirationSeconds"))
                .and_then(Value::as_i64)
                .map(|secs| since(Some(now - jiff::SignedDuration::from_secs(secs)), now))
                .unwrap_or_else(|| "<none>".into());
            let mut conds: Vec<String> = status
                .and_then(|st| st.get("conditions"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("type").and_then(Value::as_str).map(str::to_string))
                .collect();
            if conds.is_empty() {
                conds.push("Pending".into());
            }
            if status
                .and_then(|st| st.get("certificate"))
                .and_then(Value::as_str)
                .is_some_and(|c| !c.is_empty())
            {
                conds.push("Issued".into());
            }
            vec![
                name.into(),
                age.into(),
                s(spec, "signerName").to_string().into(),
                s(spec, "username").to_string().into(),
                duration.into(),
                conds.join(",").into(),
            ]
        }
        ("apps", "deployments") => {
            let (c, i) = containers(spec.and_then(|sp| sp.get("template")));
            let sel = selector_string(spec.and_then(|sp| sp.get("selector")), "");
            vec![
                name.into(),
                format!("{}/{}", n(status, "readyReplicas"), n(spec, "replicas")).into(),
                n(status, "updatedReplicas").into(),
                n(status, "availableReplicas").into(),
                age.into(),
                c.into(),
                i.into(),
                sel.into(),
            ]
        }
        ("", "replicationcontrollers") => {
            let (c, i) = containers(spec.and_then(|sp| sp.get("template")));
            vec![
                name.into(),
                n(spec, "replicas").into(),
                n(status, "replicas").into(),
                n(status, "readyReplicas").into(),
                age.into(),
                c.into(),
                i.into(),
                format_labels(spec.and_then(|sp| sp.get("selector"))).into(),
            ]
        }
        ("apps", "replicasets") => {
            let (c, i) = containers(spec.and_then(|sp| sp.get("template")));
            vec![
                name.into(),
                n(spec, "replicas").into(),
                n(status, "replicas").into(),
                n(status, "readyReplicas").into(),
                age.into(),
                c.into(),
                i.into(),
                selector_string(spec.and_then(|sp| sp.get("selector")), "<none>").into(),
            ]
        }
        ("autoscaling", "horizontalpodautoscalers") => {
            let r = spec.and_then(|sp| sp.get("scaleTargetRef"));
            let reference = format!(
                "{}/{}",
                r.and_then(|r| r["kind"].as_str()).unwrap_or(""),
                r.and_then(|r| r["name"].as_str()).unwrap_or("")
            );
            let min = match spec.and_then(|sp| sp.get("minReplicas")).and_then(Value::as_i64) {
                Some(m) => m.to_string(),
                None => "<unset>".into(),
            };
            vec![
                name.into(),
                reference.into(),
                hpa_targets(spec, status).into(),
                min.into(),
                n(spec, "maxReplicas").into(),
                n(status, "currentReplicas").into(),
                age.into(),
            ]
        }
        ("policy", "poddisruptionbudgets") => {
            let ios = |k: &str| match spec.and_then(|sp| sp.get(k)) {
                Some(Value::String(v)) => v.clone(),
                Some(Value::Number(v)) => v.to_string(),
                _ => "N/A".into(),
            };
            vec![
                name.into(),
                ios("minAvailable").into(),
                ios("maxUnavailable").into(),
                n(status, "disruptionsAllowed").into(),
                age.into(),
            ]
        }
        ("apps", "statefulsets") => {
            let (c, i) = containers(spec.and_then(|sp| sp.get("template")));
            vec![
                name.into(),
                format!("{}/{}", n(status, "readyReplicas"), n(spec, "replicas")).into(),
                age.into(),
                c.into(),
                i.into(),
            ]
        }
        ("apps", "daemonsets") => {
            let template = spec.and_then(|sp| sp.get("template"));
            let (c, i) = containers(template);
            let node_selector = template.and_then(|t| t.get("spec")).and_then(|t| t.get("nodeSelector"));
            vec![
                name.into(),
                n(status, "desiredNumberScheduled").into(),
                n(status, "currentNumberScheduled").into(),
                n(status, "numberReady").into(),
                n(status, "updatedNumberScheduled").into(),
                n(status, "numberAvailable").into(),
                format_labels(node_selector).into(),
                age.into(),
                c.into(),
                i.into(),
                selector_string(spec.and_then(|sp| sp.get("selector")), "<none>").into(),
            ]
        }
        ("batch", "jobs") => job_cells(obj, name, age, now),
        ("batch", "cronjobs") => {
            let job_spec = spec.and_then(|sp| sp.get("jobTemplate")).and_then(|j| j.get("spec"));
            let (c, i) = containers(job_spec.and_then(|j| j.get("template")));
            let tz = s(spec, "timeZone");
            let suspend = match spec.and_then(|sp| sp.get("suspend")).and_then(Value::as_bool) {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            let active = status.and_then(|st| st.get("active")).and_then(Value::as_array).map_or(0, Vec::len);
            let last = match ts(obj, "status.lastScheduleTime") {
                Some(t) => since(Some(t), now),
                None => "<none>".into(),
            };
            vec![
                name.into(),
                s(spec, "schedule").into(),
                none_if_empty(tz).into(),
                suspend.into(),
                json!(active),
                last.into(),
                age.into(),
                c.into(),
                i.into(),
                selector_string(job_spec.and_then(|j| j.get("selector")), "<none>").into(),
            ]
        }
        ("", "nodes") => node_cells(obj, name, age),
        ("", "services") => service_cells(obj, name, age),
        ("", "namespaces") => vec![name.into(), s(status, "phase").into(), age.into()],
        ("", "events") => event_cells(obj, name, now),
        ("", "configmaps") => {
            let count = obj_len(obj.get("data")) + obj_len(obj.get("binaryData"));
            vec![name.into(), json!(count), age.into()]
        }
        ("", "secrets") => {
            vec![name.into(), s(Some(obj), "type").into(), json!(obj_len(obj.get("data"))), age.into()]
        }
        ("", "serviceaccounts") => {
            let count = obj.get("secrets").and_then(Value::as_array).map_or(0, Vec::len);
            vec![name.into(), json!(count), age.into()]
        }
        ("", "endpoints") => vec![name.into(), format_endpoints(obj).into(), age.into()],
        ("", "persistentvolumeclaims") => pvc_cells(obj, name, age),
        ("", "persistentvolumes") => pv_cells(obj, name, age),
        ("apiregistration.k8s.io", "apiservices") => {
            // Upstream's aggregator table: `Local` for a local group-version, else the
            // Service; the Available condition, with its reason when it is not True.
            let service = match spec.and_then(|sp| sp.get("service")).filter(|v| v.is_object()) {
                Some(svc) => format!("{}/{}", s(Some(svc), "namespace"), s(Some(svc), "name")),
                None => "Local".into(),
            };
            let available = status
                .and_then(|st| st.get("conditions"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Available")
                .map(|c| {
                    let st = c["status"].as_str().unwrap_or("");
                    if st == "True" {
                        st.to_string()
                    } else {
                        format!("{st} ({})", c["reason"].as_str().unwrap_or(""))
                    }
                })
                .unwrap_or_else(|| "Unknown".into());
            vec![name.into(), service.into(), available.into(), age.into()]
        }
        ("storage.k8s.io", "storageclasses") => {
            let default = [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|k| obj["metadata"]["annotations"][*k].as_str() == Some("true"));
            let name = if default { format!("{name} (default)") } else { name };
            let policy = none_or(s(Some(obj), "reclaimPolicy"), "Delete").to_string();
            let mode = none_or(s(Some(obj), "volumeBindingMode"), "Immediate").to_string();
            let expand = obj.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false);
            vec![
                name.into(),
                s(Some(obj), "provisioner").into(),
                policy.into(),
                mode.into(),
                expand.to_string().into(),
                age.into(),
            ]
        }
        ("coordination.k8s.io", "leases") => {
            vec![name.into(), s(spec, "holderIdentity").into(), age.into()]
        }
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations" | "validatingwebhookconfigurations",
        ) => {
            let n = obj.get("webhooks").and_then(Value::as_array).map_or(0, Vec::len);
            vec![name.into(), n.into(), age.into()]
        }
        ("admissionregistration.k8s.io", "validatingadmissionpolicies") => {
            let n = spec.and_then(|sp| sp.get("validations")).and_then(Value::as_array).map_or(0, Vec::len);
            let pk = spec.and_then(|sp| sp.get("paramKind")).filter(|p| p.is_object());
            let pk = pk.map_or_else(
                || "<unset>".to_string(),
                |p| format!("{}/{}", s(Some(p), "apiVersion"), s(Some(p), "kind")),
            );
            vec![name.into(), n.into(), pk.into(), age.into()]
        }
        ("admissionregistration.k8s.io", "validatingadmissionpolicybindings") => {
            let pr = spec.and_then(|sp| sp.get("paramRef")).filter(|p| p.is_object());
            let pr = pr.map_or_else(
                || "<unset>".to_string(),
                |p| {
                    let ns = s(Some(p), "namespace");
                    let ns = if ns.is_empty() { "*" } else { ns };
                    let nm = s(Some(p), "name");
                    if nm.is_empty() {
                        format!("{ns}/[selector]")
                    } else {
                        format!("{ns}/{nm}")
                    }
                },
            );
            vec![name.into(), s(spec, "policyName").into(), pr.into(), age.into()]
        }
        _ => vec![name.into(), age.into()],
    }
}

// ---- accessors -----------------------------------------------------------------------------

/// A string at a dotted path under `v`, `""` when missing.
fn s<'a>(v: Option<&'a Value>, dotted: &str) -> &'a str {
    v.and_then(|v| crate::meta::path(v, dotted)).and_then(Value::as_str).unwrap_or("")
}

/// An integer field of `v`, 0 when missing.
fn n(v: Option<&Value>, key: &str) -> i64 {
    v.and_then(|v| v.get(key)).and_then(Value::as_i64).unwrap_or(0)
}

fn obj_len(v: Option<&Value>) -> usize {
    v.and_then(Value::as_object).map_or(0, |m| m.len())
}

fn arr<'a>(v: Option<&'a Value>, key: &str) -> &'a [Value] {
    v.and_then(|v| v.get(key)).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// A timestamp at a dotted path.
fn ts(obj: &Value, dotted: &str) -> Option<jiff::Timestamp> {
    crate::meta::path(obj, dotted).and_then(Value::as_str).and_then(|t| t.parse().ok())
}

/// Upstream's `translateTimestampSince`: `<unknown>` for a missing time.
fn since(t: Option<jiff::Timestamp>, now: jiff::Timestamp) -> String {
    match t {
        Some(t) => human_duration(now.duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

fn none_if_empty(v: &str) -> &str {
    if v.is_empty() {
        "<none>"
    } else {
        v
    }
}

/// Comma-joined container names and images of a pod template.
fn containers(template: Option<&Value>) -> (String, String) {
    let list = arr(template.and_then(|t| t.get("spec")), "containers");
    let names: Vec<&str> = list.iter().map(|c| s(Some(c), "name")).collect();
    let images: Vec<&str> = list.iter().map(|c| s(Some(c), "image")).collect();
    (names.join(","), images.join(","))
}

/// `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_labels(m: Option<&Value>) -> String {
    let Some(m) = m.and_then(Value::as_object).filter(|m| !m.is_empty()) else {
        return "<none>".into();
    };
    let mut pairs: Vec<(&String, &str)> = m.iter().map(|(k, v)| (k, v.as_str().unwrap_or(""))).collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A `LabelSelector` printed as upstream's `labels.Selector.String()`; `empty` stands in for
/// a selector that selects everything or nothing, and `<error>` for an invalid one.
fn selector_string(sel: Option<&Value>, empty: &str) -> String {
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(sel) = sel {
        if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in ml {
                reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
            }
        }
        for e in arr(Some(sel), "matchExpressions") {
            let key = s(Some(e), "key");
            let mut values: Vec<&str> = arr(Some(e), "values").iter().filter_map(Value::as_str).collect();
            values.sort_unstable();
            let text = match s(Some(e), "operator") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                "DoesNotExist" => format!("!{key}"),
                _ => return "<error>".into(),
            };
            reqs.push((key.to_string(), text));
        }
    }
    if reqs.is_empty() {
        return empty.into();
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter().map(|r| r.1).collect::<Vec<_>>().join(",")
}

// ---- pods ----------------------------------------------------------------------------------

fn state<'a>(cs: &'a Value, which: &str) -> Option<&'a Value> {
    cs.get("state").and_then(|st| st.get(which)).filter(|v| v.is_object())
}

fn last_terminated_at(cs: &Value) -> Option<jiff::Timestamp> {
    cs.get("lastState")
        .and_then(|l| l.get("terminated"))
        .and_then(|t| t.get("finishedAt"))
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
}

fn max_time(a: Option<jiff::Timestamp>, b: Option<jiff::Timestamp>) -> Option<jiff::Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn condition_true(status: Option<&Value>, ty: &str) -> bool {
    arr(status, "conditions").iter().any(|c| s(Some(c), "type") == ty && s(Some(c), "status") == "True")
}

/// Upstream's `printPod`: the reason-aware status, ready count and restarts.
fn pod_cells(obj: &Value, name: String, age: String, now: jiff::Timestamp) -> Vec<Value> {
    let spec = obj.get("spec");
    let status = obj.get("status");
    let init_specs = arr(spec, "initContainers");
    let restartable = |cname: &str| {
        init_specs.iter().any(|c| s(Some(c), "name") == cname && s(Some(c), "restartPolicy") == "Always")
    };
    let total = arr(spec, "containers").len()
        + init_specs.iter().filter(|c| s(Some(c), "restartPolicy") == "Always").count();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart: Option<jiff::Timestamp> = None;
    let mut sidecar_last_restart: Option<jiff::Timestamp> = None;

    let phase = s(status, "phase");
    let mut reason =
        if s(status, "reason").is_empty() { phase.to_string() } else { s(status, "reason").to_string() };
    for c in arr(status, "conditions") {
        if s(Some(c), "type") == "PodScheduled" && s(Some(c), "reason") == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }

    let mut initializing = false;
    let init_statuses = arr(status, "initContainerStatuses");
    for (i, cs) in init_statuses.iter().enumerate() {
        let cname = s(Some(cs), "name");
        restarts += n(Some(cs), "restartCount");
        last_restart = max_time(last_restart, last_terminated_at(cs));
        let sidecar = restartable(cname);
        if sidecar {
            sidecar_restarts += n(Some(cs), "restartCount");
            sidecar_last_restart = max_time(sidecar_last_restart, last_terminated_at(cs));
        }
        let terminated = state(cs, "terminated");
        let waiting = state(cs, "waiting");
        if terminated.is_some_and(|t| n(Some(t), "exitCode") == 0) {
            continue;
        }
        if sidecar && cs.get("started").and_then(Value::as_bool) == Some(true) {
            if cs.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = if !s(Some(t), "reason").is_empty() {
                format!("Init:{}", s(Some(t), "reason"))
            } else if n(Some(t), "signal") != 0 {
                format!("Init:Signal:{}", n(Some(t), "signal"))
            } else {
                format!("Init:ExitCode:{}", n(Some(t), "exitCode"))
            };
        } else if let Some(w) = waiting.filter(|w| {
            let r = s(Some(w), "reason");
            !r.is_empty() && r != "PodInitializing"
        }) {
            reason = format!("Init:{}", s(Some(w), "reason"));
        } else {
            reason = format!("Init:{}/{}", i, init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true(status, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for cs in arr(status, "containerStatuses").iter().rev() {
            restarts += n(Some(cs), "restartCount");
            last_restart = max_time(last_restart, last_terminated_at(cs));
            let waiting_reason = state(cs, "waiting").map(|w| s(Some(w), "reason")).unwrap_or("");
            let terminated = state(cs, "terminated");
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                reason = if !s(Some(t), "reason").is_empty() {
                    s(Some(t), "reason").to_string()
                } else if n(Some(t), "signal") != 0 {
                    format!("Signal:{}", n(Some(t), "signal"))
                } else {
                    format!("ExitCode:{}", n(Some(t), "exitCode"))
                };
            } else if cs.get("ready").and_then(Value::as_bool) == Some(true) && state(cs, "running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(status, "Ready") { "Running".into() } else { "NotReady".into() };
        }
    }

    let deleting = obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|d| !d.is_null());
    if deleting && s(status, "reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(t), now)),
        _ => restarts.to_string(),
    };

    let pod_ip = arr(status, "podIPs").first().map(|ip| s(Some(ip), "ip")).filter(|ip| !ip.is_empty());
    let pod_ip = pod_ip.unwrap_or_else(|| s(status, "podIP"));
    let gates = arr(spec, "readinessGates");
    let readiness = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(status, "conditions");
        let true_count = gates
            .iter()
            .filter(|g| {
                let ty = s(Some(g), "conditionType");
                conds
                    .iter()
                    .find(|c| s(Some(c), "type") == ty)
                    .is_some_and(|c| s(Some(c), "status") == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        name.into(),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_str.into(),
        age.into(),
        none_if_empty(pod_ip).into(),
        none_if_empty(s(spec, "nodeName")).into(),
        none_if_empty(s(status, "nominatedNodeName")).into(),
        readiness.into(),
    ]
}

// ---- jobs, nodes, services, events, storage ------------------------------------------------

fn job_cells(obj: &Value, name: String, age: String, now: jiff::Timestamp) -> Vec<Value> {
    let spec = obj.get("spec");
    let status = obj.get("status");
    let succeeded = n(status, "succeeded");
    let completions = match spec.and_then(|sp| sp.get("completions")).and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = n(spec, "parallelism");
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let duration = match (ts(obj, "status.startTime"), ts(obj, "status.completionTime")) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now.duration_since(start).as_secs()),
        (Some(start), Some(end)) => human_duration(end.duration_since(start).as_secs()),
    };
    let deleting = obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|d| !d.is_null());
    let job_status = if condition_true(status, "Complete") {
        "Complete"
    } else if condition_true(status, "Failed") {
        "Failed"
    } else if deleting {
        "Terminating"
    } else if condition_true(status, "Suspended") {
        "Suspended"
    } else if condition_true(status, "FailureTarget") {
        "FailureTarget"
    } else if condition_true(status, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (c, i) = containers(spec.and_then(|sp| sp.get("template")));
    vec![
        name.into(),
        job_status.into(),
        completions.into(),
        duration.into(),
        age.into(),
        c.into(),
        i.into(),
        selector_string(spec.and_then(|sp| sp.get("selector")), "<none>").into(),
    ]
}

fn node_cells(obj: &Value, name: String, age: String) -> Vec<Value> {
    let status = obj.get("status");
    let mut parts: Vec<&str> = Vec::new();
    if let Some(c) = arr(status, "conditions").iter().rev().find(|c| s(Some(c), "type") == "Ready") {
        parts.push(if s(Some(c), "status") == "True" { "Ready" } else { "NotReady" });
    }
    if parts.is_empty() {
        parts.push("Unknown");
    }
    if obj.get("spec").and_then(|sp| sp.get("unschedulable")).and_then(Value::as_bool) == Some(true) {
        parts.push("SchedulingDisabled");
    }
    let mut roles: Vec<&str> = Vec::new();
    if let Some(labels) = obj.get("metadata").and_then(|m| m.get("labels")).and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role);
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v);
                }
            }
        }
    }
    roles.sort_unstable();
    roles.dedup();
    let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
    let address = |ty: &str| {
        arr(status, "addresses")
            .iter()
            .find(|a| s(Some(a), "type") == ty)
            .map(|a| s(Some(a), "address"))
            .filter(|a| !a.is_empty())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = status.and_then(|st| st.get("nodeInfo"));
    let unknown = |key: &str| {
        let v = s(info, key);
        if v.is_empty() {
            "<unknown>".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        name.into(),
        parts.join(",").into(),
        roles.into(),
        age.into(),
        s(info, "kubeletVersion").into(),
        address("InternalIP").into(),
        address("ExternalIP").into(),
        unknown("osImage").into(),
        unknown("kernelVersion").into(),
        unknown("containerRuntimeVersion").into(),
    ]
}

fn service_cells(obj: &Value, name: String, age: String) -> Vec<Value> {
    let spec = obj.get("spec");
    let ty = s(spec, "type");
    let cluster_ip =
        arr(spec, "clusterIPs").first().and_then(Value::as_str).unwrap_or_else(|| s(spec, "clusterIP"));
    let external_ips: Vec<&str> = arr(spec, "externalIPs").iter().filter_map(Value::as_str).collect();
    let external = match ty {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let ingress = obj.get("status").and_then(|st| st.get("loadBalancer"));
            let mut all: Vec<&str> = arr(ingress, "ingress")
                .iter()
                .map(|i| if s(Some(i), "ip").is_empty() { s(Some(i), "hostname") } else { s(Some(i), "ip") })
                .filter(|a| !a.is_empty())
                .collect();
            all.extend(external_ips);
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => s(spec, "externalName").to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = arr(spec, "ports")
        .iter()
        .map(|p| {
            let port = n(Some(p), "port");
            let proto = s(Some(p), "protocol");
            match n(Some(p), "nodePort") {
                np if np > 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() { "<none>".to_string() } else { ports.join(",") };
    vec![
        name.into(),
        ty.into(),
        none_if_empty(cluster_ip).into(),
        external.into(),
        ports.into(),
        age.into(),
        format_labels(spec.and_then(|sp| sp.get("selector"))).into(),
    ]
}

fn event_cells(obj: &Value, name: String, now: jiff::Timestamp) -> Vec<Value> {
    let first_time = ts(obj, "firstTimestamp").or_else(|| ts(obj, "eventTime"));
    let first = since(first_time, now);
    let mut last = match ts(obj, "lastTimestamp") {
        Some(t) => since(Some(t), now),
        None => first.clone(),
    };
    let mut count = n(Some(obj), "count");
    if let Some(series) = obj.get("series").filter(|v| v.is_object()) {
        last = since(ts(series, "lastObservedTime"), now);
        count = n(Some(series), "count");
    } else if count == 0 {
        count = 1;
    }
    let involved = obj.get("involvedObject");
    let kind = s(involved, "kind").to_lowercase();
    let target = match s(involved, "name") {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let component = match s(obj.get("source"), "component") {
        "" => s(Some(obj), "reportingComponent"),
        c => c,
    };
    let instance = match s(obj.get("source"), "host") {
        "" => s(Some(obj), "reportingInstance"),
        h => h,
    };
    let source = if instance.is_empty() { component.to_string() } else { format!("{component}, {instance}") };
    vec![
        last.into(),
        s(Some(obj), "type").into(),
        s(Some(obj), "reason").into(),
        target.into(),
        s(involved, "fieldPath").into(),
        source.into(),
        s(Some(obj), "message").trim().into(),
        first.into(),
        json!(count),
        name.into(),
    ]
}

/// Upstream's `formatEndpoints`: up to three `ip:port` pairs, then `+ N more...`.
fn format_endpoints(obj: &Value) -> String {
    let subsets = arr(Some(obj), "subsets");
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addrs = arr(Some(ss), "addresses");
        let ports = arr(Some(ss), "ports");
        if ports.is_empty() {
            count += addrs.len();
            for a in addrs {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(s(Some(a), "ip").to_string());
            }
            continue;
        }
        for p in ports {
            count += addrs.len();
            for a in addrs {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                let ip = s(Some(a), "ip");
                let port = n(Some(p), "port");
                if ip.contains(':') {
                    list.push(format!("[{ip}]:{port}"));
                } else {
                    list.push(format!("{ip}:{port}"));
                }
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

/// Upstream's `GetAccessModesAsString`.
fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|v| v.as_str() == Some(m));
    let mut out = Vec::new();
    for (mode, short) in [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ] {
        if has(mode) {
            out.push(short);
        }
    }
    out.join(",")
}

fn storage_class(obj: &Value) -> String {
    let from_annotation = obj
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
        .and_then(Value::as_str);
    match from_annotation {
        Some(c) => c.to_string(),
        None => s(obj.get("spec"), "storageClassName").to_string(),
    }
}

fn pvc_cells(obj: &Value, name: String, age: String) -> Vec<Value> {
    let spec = obj.get("spec");
    let status = obj.get("status");
    let deleting = obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|d| !d.is_null());
    let phase = if deleting { "Terminating" } else { s(status, "phase") };
    let volume = s(spec, "volumeName");
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (s(status, "capacity.storage").to_string(), access_modes(arr(status, "accessModes")))
    };
    let vac = none_or(s(spec, "volumeAttributesClassName"), "<unset>");
    let mode = none_or(s(spec, "volumeMode"), "<unset>");
    vec![
        name.into(),
        phase.into(),
        volume.into(),
        capacity.into(),
        modes.into(),
        storage_class(obj).into(),
        vac.into(),
        age.into(),
        mode.into(),
    ]
}

fn pv_cells(obj: &Value, name: String, age: String) -> Vec<Value> {
    let spec = obj.get("spec");
    let status = obj.get("status");
    let deleting = obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|d| !d.is_null());
    let phase = if deleting { "Terminating" } else { s(status, "phase") };
    let claim = match spec.and_then(|sp| sp.get("claimRef")).filter(|c| c.is_object()) {
        Some(c) => format!("{}/{}", s(Some(c), "namespace"), s(Some(c), "name")),
        None => String::new(),
    };
    vec![
        name.into(),
        s(spec, "capacity.storage").into(),
        access_modes(arr(spec, "accessModes")).into(),
        s(spec, "persistentVolumeReclaimPolicy").into(),
        phase.into(),
        claim.into(),
        storage_class(obj).into(),
        none_or(s(spec, "volumeAttributesClassName"), "<unset>").into(),
        s(status, "reason").into(),
        age.into(),
        none_or(s(spec, "volumeMode"), "<unset>").into(),
    ]
}

fn none_or<'a>(v: &'a str, placeholder: &'a str) -> &'a str {
    if v.is_empty() {
        placeholder
    } else {
        v
    }
}

/// Upstream's short human duration ("45s", "5m", "3h", "2d"...).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        format!("{s}s")
    } else if s < 600 {
        let m = s / 60;
        let r = s % 60;
        if r == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{r}s")
        }
    } else if s < 3 * 3600 {
        format!("{}m", s / 60)
    } else if s < 8 * 3600 {
        let h = s / 3600;
        let m = (s % 3600) / 60;
        if m == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{m}m")
        }
    } else if s < 48 * 3600 {
        format!("{}h", s / 3600)
    } else if s < 8 * 86400 {
        let d = s / 86400;
        let h = (s % 86400) / 3600;
        if h == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{h}h")
        }
    } else if s < 2 * 365 * 86400 {
        format!("{}d", s / 86400)
    } else if s < 8 * 365 * 86400 {
        let y = s / (365 * 86400);
        let d = (s % (365 * 86400)) / 86400;
        if d == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{d}d")
        }
    } else {
        format!("{}y", s / (365 * 86400))
    }
}

/// Upstream's `formatHPAMetrics`: `cpu: 80%/50%` per metric (`<unknown>` before the
/// first measurement), at most four, `<none>` without metrics.
fn hpa_targets(spec: Option<&Value>, status: Option<&Value>) -> String {
    let specs = spec.and_then(|s| s["metrics"].as_array()).cloned().unwrap_or_default();
    // autoscaling/v1: one CPU target.
    if let Some(t) = spec.and_then(|s| s["targetCPUUtilizationPercentage"].as_i64()) {
        let c = status
            .and_then(|s| s["currentCPUUtilizationPercentage"].as_i64())
            .map_or("<unknown>".to_string(), |c| format!("{c}%"));
        return format!("cpu: {c}/{t}%");
    }
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = status.and_then(|s| s["currentMetrics"].as_array()).cloned().unwrap_or_default();
    let mut list = Vec::new();
    for (i, m) in specs.iter().enumerate() {
        let key = match m["type"].as_str().unwrap_or("") {
            "Resource" => "resource",
            "ContainerResource" => "containerResource",
            "Pods" => "pods",
            "Object" => "object",
            "External" => "external",
            _ => continue,
        };
        let src = &m[key];
        let cur = statuses.get(i).map(|s| &s[key]["current"]);
        let target = &src["target"];
        let label = src["name"].as_str().or_else(|| src["metric"]["name"].as_str()).unwrap_or("");
        let entry = if let Some(u) = target["averageUtilization"].as_i64() {
            let c = cur
                .and_then(|c| c["averageUtilization"].as_i64())
                .map_or("<unknown>".to_string(), |c| format!("{c}%"));
            format!("{label}: {c}/{u}%")
        } else {
            let want = target["averageValue"].as_str().or_else(|| target["value"].as_str()).unwrap_or("");
            let c = cur
                .and_then(|c| c["averageValue"].as_str().or_else(|| c["value"].as_str()))
                .map_or("<unknown>".to_string(), str::to_string);
            format!("{label}: {c}/{want}")
        };
        list.push(entry);
    }
    if list.len() > 4 {
        let more = list.len() - 4;
        list.truncate(4);
        return format!("{} + {more} more...", list.join(", "));
    }
    list.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    fn now() -> jiff::Timestamp {
        "2024-01-01T01:00:00Z".parse().unwrap()
    }

    fn row(group: &str, plural: &str, obj: Value) -> Vec<Value> {
        let res = find(group, "v1", plural).unwrap();
        let cells = cells(res, &obj, now());
        assert_eq!(cells.len(), columns(res).len(), "{plural}: one cell per column");
        cells
    }

    #[test]
    fn every_resource_has_matching_cells() {
        for res in crate::registry::RESOURCES {
            let c = cells(res, &json!({"metadata": {"name": "x"}}), now());
            assert_eq!(c.len(), columns(res).len(), "{}", res.plural);
            assert_eq!(c[if res.plural == "events" { 9 } else { 0 }], "x");
        }
    }

    #[test]
    fn pod_rows() {
        let running = row(
            "",
            "pods",
            json!({"metadata": {"name": "web", "creationTimestamp": "2024-01-01T00:55:00Z"},
                   "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
                   "status": {"phase": "Running", "podIP": "10.0.0.5",
                     "containerStatuses": [
                       {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}},
                        "lastState": {"terminated": {"finishedAt": "2024-01-01T00:58:00Z"}}},
                       {"name": "b", "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
        );
        assert_eq!(
            running,
            vec![
                json!("web"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("2 (2m ago)"),
                json!("5m"),
                json!("10.0.0.5"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        let creating = row(
            "",
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]},
                   "status": {"phase": "Pending", "containerStatuses": [
                       {"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}),
        );
        assert_eq!(creating[2], "ContainerCreating");
        assert_eq!(creating[4], "<unknown>");
        let done = row(
            "",
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]},
                   "status": {"phase": "Succeeded", "containerStatuses": [
                       {"name": "a", "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}}),
        );
        assert_eq!(done[2], "Completed");
        let deleting = row(
            "",
            "pods",
            json!({"metadata": {"name": "p", "deletionTimestamp": "2024-01-01T00:59:00Z"},
                   "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running"}}),
        );
        assert_eq!(deleting[2], "Terminating");
        let init = row(
            "",
            "pods",
            json!({"metadata": {"name": "p"},
                   "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
                   "status": {"phase": "Pending", "initContainerStatuses": [
                       {"name": "i", "state": {"running": {}}}]}}),
        );
        assert_eq!(init[2], "Init:0/1");
    }

    #[test]
    fn workload_rows() {
        let d = row(
            "apps",
            "deployments",
            json!({"metadata": {"name": "web", "creationTimestamp": "2023-12-30T01:00:00Z"},
                   "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "redis"}]}}},
                   "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}),
        );
        assert_eq!(
            d,
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("2d"),
                json!("a,b"),
                json!("nginx,redis"),
                json!("app=web")
            ]
        );
        let j = row(
            "batch",
            "jobs",
            json!({"metadata": {"name": "pi"}, "spec": {"completions": 1},
                   "status": {"succeeded": 1, "startTime": "2024-01-01T00:00:00Z",
                     "completionTime": "2024-01-01T00:00:30Z",
                     "conditions": [{"type": "Complete", "status": "True"}]}}),
        );
        assert_eq!(&j[1..4], &[json!("Complete"), json!("1/1"), json!("30s")]);
        let cj = row(
            "batch",
            "cronjobs",
            json!({"metadata": {"name": "c"}, "spec": {"schedule": "*/5 * * * *", "suspend": false}}),
        );
        assert_eq!(
            &cj[1..6],
            &[json!("*/5 * * * *"), json!("<none>"), json!("False"), json!(0), json!("<none>")]
        );
    }

    #[test]
    fn node_service_event_rows() {
        let node = row(
            "",
            "nodes",
            json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
                   "spec": {"unschedulable": true},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}],
                     "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}],
                     "nodeInfo": {"kubeletVersion": "v1.34.0"}}}),
        );
        assert_eq!(&node[1..3], &[json!("Ready,SchedulingDisabled"), json!("control-plane")]);
        assert_eq!(node[4], "v1.34.0");
        assert_eq!(node[5], "192.168.1.2");
        assert_eq!(node[6], "<none>");
        assert_eq!(node[7], "<unknown>");

        let svc = row(
            "",
            "services",
            json!({"metadata": {"name": "web"},
                   "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "selector": {"app": "web"},
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}}),
        );
        assert_eq!(
            &svc[1..5],
            &[json!("NodePort"), json!("10.96.0.10"), json!("<none>"), json!("80:30080/TCP,53/UDP")]
        );
        assert_eq!(svc[6], "app=web");

        let ev = row(
            "",
            "events",
            json!({"metadata": {"name": "x.1"}, "type": "Normal", "reason": "Scheduled",
                   "involvedObject": {"kind": "Pod", "name": "web"}, "message": " ok ",
                   "lastTimestamp": "2024-01-01T00:59:00Z", "source": {"component": "default-scheduler"}}),
        );
        assert_eq!(
            ev,
            vec![
                json!("60s"),
                json!("Normal"),
                json!("Scheduled"),
                json!("pod/web"),
                json!(""),
                json!("default-scheduler"),
                json!("ok"),
                json!("<unknown>"),
                json!(1),
                json!("x.1")
            ]
        );
        let cm = row("", "configmaps", json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}));
        assert_eq!(cm[1], 2);
    }
}
