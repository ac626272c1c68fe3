// Reads rendered Kubernetes objects and parses every KafkaTopic and KafkaUser with Strimzi's
// own model (io.strimzi:api, the version infra/k8s/pom.xml pins), as the operator does:
// a wrong type, an unknown enum value (ACL operation, authentication type) or a field the
// model does not know (kept aside by Strimzi as "additional properties") is a problem.
//
//   java -cp '.cache/k8s-jars/*' infra/k8s/StrimziCheck.java rendered.yaml
//
// Prints one line per problem and a summary; exits 1 when there is any problem.

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.MappingIterator;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.dataformat.yaml.YAMLFactory;
import io.strimzi.api.kafka.model.topic.KafkaTopic;
import io.strimzi.api.kafka.model.user.KafkaUser;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

public class StrimziCheck {
    public static void main(String[] args) throws Exception {
        ObjectMapper mapper = new ObjectMapper(new YAMLFactory());
        List<String> problems = new ArrayList<>();
        int checked = 0;
        String text = Files.readString(Path.of(args[0]));
        try (MappingIterator<JsonNode> docs = mapper.readerFor(JsonNode.class).readValues(text)) {
            while (docs.hasNext()) {
                JsonNode doc = docs.next();
                if (doc == null || !doc.isObject()) {
                    continue;
                }
                String kind = doc.path("kind").asText();
                Class<?> type = switch (kind) {
                    case "KafkaTopic" -> KafkaTopic.class;
                    case "KafkaUser" -> KafkaUser.class;
                    default -> null;
                };
                if (type == null) {
                    continue;
                }
                String where = kind + "/" + doc.path("metadata").path("name").asText();
                try {
                    Object parsed = mapper.treeToValue(doc, type);
                    unknownFields(parsed, where, problems, Collections.newSetFromMap(new IdentityHashMap<>()));
                    notKept(doc, mapper.valueToTree(parsed), where, "", problems);
                    checked++;
                } catch (Exception e) {
                    problems.add(where + ": " + e.getMessage().lines().findFirst().orElse(""));
                }
            }
        }
        problems.forEach(System.out::println);
        System.out.println("checked " + checked + " Strimzi resources against io.strimzi:api, "
                + problems.size() + " problem(s)");
        System.exit(problems.isEmpty() ? 0 : 1);
    }

    // What the model writes back must hold every value it was given: an enum value it does not
    // know (an ACL operation, say) reads as null and is dropped.
    static void notKept(JsonNode given, JsonNode kept, String where, String path, List<String> problems) {
        if (given.isObject()) {
            given.fieldNames().forEachRemaining(field -> notKept(
                    given.get(field), kept.path(field), where, path + "." + field, problems));
        } else if (given.isArray()) {
            for (int i = 0; i < given.size(); i++) {
                notKept(given.get(i), kept.path(i), where, path + "[" + i + "]", problems);
            }
        } else if (kept.isMissingNode() || kept.isNull() || !given.asText().equalsIgnoreCase(kept.asText())) {
            problems.add(where + ": " + path.substring(1) + " = " + given.asText()
                    + " is not a value the model knows (read back as " + kept + ")");
        }
    }

    // Walks the parsed model through its getters; any non-empty getAdditionalProperties()
    // holds fields the model does not define.
    static void unknownFields(Object value, String where, List<String> problems, Set<Object> seen)
            throws Exception {
        if (value == null || !seen.add(value)) {
            return;
        }
        if (value instanceof Collection<?> items) {
            for (Object item : items) {
                unknownFields(item, where, problems, seen);
            }
            return;
        }
        if (value instanceof Map<?, ?> map) {
            for (Object item : map.values()) {
                unknownFields(item, where, problems, seen);
            }
            return;
        }
        String name = value.getClass().getName();
        if (!name.startsWith("io.strimzi.") && !name.startsWith("io.fabric8.")) {
            return;
        }
        for (Method getter : value.getClass().getMethods()) {
            if (getter.getParameterCount() != 0 || Modifier.isStatic(getter.getModifiers())
                    || !getter.getName().startsWith("get") || getter.getName().equals("getClass")) {
                continue;
            }
            Object child;
            try {
                child = getter.invoke(value);
            } catch (ReflectiveOperationException e) {
                continue;
            }
            if (getter.getName().equals("getAdditionalProperties")) {
                if (child instanceof Map<?, ?> extra && !extra.isEmpty()) {
                    problems.add(where + ": " + value.getClass().getSimpleName()
                            + " has no field(s) " + extra.keySet());
                }
                continue;
            }
            unknownFields(child, where, problems, seen);
        }
    }
}
